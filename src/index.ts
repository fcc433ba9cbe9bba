/** rhizosphere's in-process API: start a hub, read its connections table, run commands. */
export { startHub, Hub, StartError, type HubOptions, type HubEvents, type HubPorts, type HubUrls, type ExecCommand } from './hub.js';
export { resolveConfig, ConfigError, ConfigSchema, DEFAULTS, SETTINGS, type HubConfig, type HandlerSpec } from './config.js';
export {
  defineHandler,
  type Handler,
  type HandlerObject,
  type HandlerFunction,
  type HandlerContext,
  type HandlerEvents,
  type HandlerEventName,
  type HandlerJobs,
  type HandlerStore,
  type DeviceView,
  type TelemetryMessage,
  type PublishOptions,
  type MessageListener,
  type StopFunction,
} from './handlers/contract.js';
export { HandlerHost, type HandlerState } from './handlers/loader.js';
export { HubError, ERROR_CODES, type ErrorCode } from './errors.js';
export type { DeviceEntry, DeviceInfo, DeviceLink, OfflineReason } from './presence.js';
export type { CommandRequest, Origin } from './dispatcher.js';
export { JobRunner, JobSpecSchema, type JobSpec, type JobCreator, type JobView, type JobSummary, type JobTarget, type CreatedJob, type Counts as JobCounts, type JobState, type TargetState } from './jobs/runner.js';
export type { Selector } from './jobs/selector.js';
export { Topics, DEFAULT_TOPIC_PREFIX } from './protocol/topics.js';
export { isValidId, idProblem, ID_MAX_LENGTH } from './protocol/ids.js';
export {
  ORDERS,
  type Order,
  type Command,
  type Response,
  type Request,
  type Reply,
  type OkReply,
  type ErrorReply,
  type CommandResult,
  type Status,
  type Transport,
} from './protocol/schemas.js';
