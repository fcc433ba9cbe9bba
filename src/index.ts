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
  type HandlerDeviceState,
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
export type { StateCondition, StateComparison, StateOperand } from './jobs/state-condition.js';
export { DeviceStateService, type StateView, type StateActor, type SetDesiredOptions } from './device-state.js';
export type { StateDoc, JsonValue, DeltaMessage, ReportMessage } from './protocol/state.js';
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
export { HealthTelemetry, type HealthEvents, type SeriesQuery, type FleetQuery } from './health.js';
export {
  HealthReportSchema,
  HEALTH_SERIES,
  FLEET_RANKINGS,
  type HealthReport,
  type HealthSample,
  type HealthSeries,
  type HealthSeriesName,
  type FleetHealth,
  type FleetHealthEntry,
  type FleetRanking,
} from './protocol/health.js';
