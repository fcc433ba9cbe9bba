/**
 * The hub's embedded database: SQLite in `<data-dir>/rhizosphere.db`, in WAL mode so the
 * admin commands (`rhizosphere device add`, …) can write while the hub runs. The schema
 * moves forward by numbered migrations recorded in `PRAGMA user_version`.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';

export type Db = Database.Database;

/** Each entry upgrades the schema by one version; never edit one that has shipped, add a new one. */
const MIGRATIONS: string[] = [
  // 1: devices, people, API tokens, browser sessions, the audit trail
  `
  CREATE TABLE devices (
    id            TEXT PRIMARY KEY,
    token_hash    TEXT,
    state         TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'pending')),
    tags          TEXT NOT NULL DEFAULT '[]',
    created_at    INTEGER NOT NULL,
    transport     TEXT,
    remote_address TEXT,
    connected_at  INTEGER,
    last_seen     INTEGER
  );
  CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
  );
  CREATE TABLE tokens (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    secret_hash   TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL
  );
  CREATE TABLE sessions (
    id_hash       TEXT PRIMARY KEY,
    user          TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
  );
  CREATE TABLE audit (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    actor_kind    TEXT NOT NULL,
    remote        TEXT,
    action        TEXT NOT NULL,
    device        TEXT,
    command_order TEXT,
    cmd_str       TEXT,
    outcome       TEXT NOT NULL,
    exit_code     INTEGER,
    duration_ms   INTEGER,
    detail        TEXT
  );
  CREATE INDEX audit_device_at ON audit(device, at);
  CREATE INDEX audit_at ON audit(at);
  `,
  // 2: fleet jobs and the outcome on each of their devices
  `
  CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    created_at    INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    actor_kind    TEXT NOT NULL,
    remote        TEXT,
    command_order TEXT NOT NULL,
    cmd_str       TEXT NOT NULL,
    timeout_ms    INTEGER NOT NULL,
    concurrency   INTEGER NOT NULL,
    deadline_at   INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('running', 'done', 'canceled')),
    target        TEXT NOT NULL DEFAULT '{}',
    finished_at   INTEGER
  );
  CREATE INDEX jobs_created_at ON jobs(created_at);
  CREATE INDEX jobs_state ON jobs(state);
  CREATE TABLE job_targets (
    job_id        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    device        TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'succeeded', 'failed', 'timed_out', 'canceled')),
    result        TEXT,
    error         TEXT,
    exit_code     INTEGER,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (job_id, device)
  ) WITHOUT ROWID;
  CREATE INDEX job_targets_state ON job_targets(state);
  `,
  // 3: the small key-value store of each server-side handler (docs/handlers.md), JSON values
  `
  CREATE TABLE handler_kv (
    handler       TEXT NOT NULL,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (handler, key)
  ) WITHOUT ROWID;
  `,
  // 4: the tags a device declares itself (hypha --tag), kept apart from those an admin assigns
  `
  ALTER TABLE devices ADD COLUMN declared_tags TEXT NOT NULL DEFAULT '[]';
  `,
  // 5: a counter bumped by every change to credentials or tags, whoever writes it: a hub polls
  // this one row instead of re-reading every credential whenever anything was written (the
  // audit trail of other hubs sharing the database writes all the time)
  `
  CREATE TABLE change_counters (
    name          TEXT PRIMARY KEY,
    version       INTEGER NOT NULL
  ) WITHOUT ROWID;
  INSERT INTO change_counters (name, version) VALUES ('credentials', 0);
  CREATE TRIGGER devices_added AFTER INSERT ON devices
    BEGIN UPDATE change_counters SET version = version + 1 WHERE name = 'credentials'; END;
  CREATE TRIGGER devices_removed AFTER DELETE ON devices
    BEGIN UPDATE change_counters SET version = version + 1 WHERE name = 'credentials'; END;
  CREATE TRIGGER devices_changed AFTER UPDATE OF token_hash, state, tags, declared_tags ON devices
    BEGIN UPDATE change_counters SET version = version + 1 WHERE name = 'credentials'; END;
  CREATE TRIGGER tokens_added AFTER INSERT ON tokens
    BEGIN UPDATE change_counters SET version = version + 1 WHERE name = 'credentials'; END;
  CREATE TRIGGER tokens_removed AFTER DELETE ON tokens
    BEGIN UPDATE change_counters SET version = version + 1 WHERE name = 'credentials'; END;
  CREATE TRIGGER tokens_changed AFTER UPDATE ON tokens
    BEGIN UPDATE change_counters SET version = version + 1 WHERE name = 'credentials'; END;
  CREATE TRIGGER users_added AFTER INSERT ON users
    BEGIN UPDATE change_counters SET version = version + 1 WHERE name = 'credentials'; END;
  CREATE TRIGGER users_removed AFTER DELETE ON users
    BEGIN UPDATE change_counters SET version = version + 1 WHERE name = 'credentials'; END;
  CREATE TRIGGER users_changed AFTER UPDATE OF role ON users
    BEGIN UPDATE change_counters SET version = version + 1 WHERE name = 'credentials'; END;
  `,
  // 6: cluster replication (src/cluster/replication.ts). Every local write to devices (not the
  // connection columns), users, tokens and sessions is logged by key, whoever makes it (the hub,
  // an admin command, even while the hub is down), so a node can push it to the cluster; one
  // row per key (the latest change). Changes applied from the cluster set `applying` inside
  // their own transaction, so they are not logged back. A standalone hub pushes nothing: the
  // log keeps one row per key (session rows go once past any session's lifetime), ready for a
  // first join.
  `
  CREATE TABLE replication_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    applying      INTEGER NOT NULL DEFAULT 0
  );
  INSERT INTO replication_state (id, applying) VALUES (1, 0);
  CREATE TABLE local_changes (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl           TEXT NOT NULL,
    key           TEXT NOT NULL,
    at            INTEGER NOT NULL,
    UNIQUE (tbl, key)
  );
  CREATE TRIGGER devices_logged_add AFTER INSERT ON devices WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'devices' AND key = NEW.id;
      INSERT INTO local_changes (tbl, key, at) VALUES ('devices', NEW.id, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER devices_logged_remove AFTER DELETE ON devices WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'devices' AND key = OLD.id;
      INSERT INTO local_changes (tbl, key, at) VALUES ('devices', OLD.id, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER devices_logged_change AFTER UPDATE OF id, token_hash, state, tags, declared_tags, created_at ON devices WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'devices' AND key = NEW.id;
      INSERT INTO local_changes (tbl, key, at) VALUES ('devices', NEW.id, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER users_logged_add AFTER INSERT ON users WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'users' AND key = NEW.name;
      INSERT INTO local_changes (tbl, key, at) VALUES ('users', NEW.name, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER users_logged_remove AFTER DELETE ON users WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'users' AND key = OLD.name;
      INSERT INTO local_changes (tbl, key, at) VALUES ('users', OLD.name, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER users_logged_change AFTER UPDATE ON users WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'users' AND key = NEW.name;
      INSERT INTO local_changes (tbl, key, at) VALUES ('users', NEW.name, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER tokens_logged_add AFTER INSERT ON tokens WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'tokens' AND key = NEW.name;
      INSERT INTO local_changes (tbl, key, at) VALUES ('tokens', NEW.name, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER tokens_logged_remove AFTER DELETE ON tokens WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'tokens' AND key = OLD.name;
      INSERT INTO local_changes (tbl, key, at) VALUES ('tokens', OLD.name, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER tokens_logged_change AFTER UPDATE ON tokens WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'tokens' AND key = NEW.name;
      INSERT INTO local_changes (tbl, key, at) VALUES ('tokens', NEW.name, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER sessions_logged_add AFTER INSERT ON sessions WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'sessions' AND key = NEW.id_hash;
      INSERT INTO local_changes (tbl, key, at) VALUES ('sessions', NEW.id_hash, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER sessions_logged_remove AFTER DELETE ON sessions WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'sessions' AND key = OLD.id_hash;
      INSERT INTO local_changes (tbl, key, at) VALUES ('sessions', OLD.id_hash, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER sessions_logged_change AFTER UPDATE ON sessions WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'sessions' AND key = NEW.id_hash;
      INSERT INTO local_changes (tbl, key, at) VALUES ('sessions', NEW.id_hash, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  `,
  // 7: keeping a Mosquitto's dynamic-security plugin in step (--broker-dynsec,
  // src/store/broker-outbox.ts): the marker row the hub writes, and the plugin's commands
  // (with the plaintext of new tokens) waiting to be sent, deleted once the broker answered
  `
  CREATE TABLE broker_sync (
    name          TEXT PRIMARY KEY,
    settings      TEXT NOT NULL,
    since         INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE broker_outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    subject       TEXT NOT NULL,
    commands      TEXT NOT NULL,
    notice        TEXT,
    created_at    INTEGER NOT NULL
  );
  `,
  // 8: the agent and version each device last announced in its birth ("hypha/0.1.0"), a
  // connection column like last_seen (each node writes its own; not replicated)
  `
  ALTER TABLE devices ADD COLUMN agent TEXT;
  `,
  // 9: staged rollouts of fleet jobs (src/jobs/rollout.ts): the rollout, abort criteria and
  // canary as JSON, why a job was aborted, and whether its canary has passed
  `
  ALTER TABLE jobs ADD COLUMN staging TEXT;
  ALTER TABLE jobs ADD COLUMN reason TEXT;
  ALTER TABLE jobs ADD COLUMN canary_passed INTEGER NOT NULL DEFAULT 0;
  `,
  // 10: desired and reported state of each device (src/store/device-state.ts, docs/protocol.md
  // "Desired state"): two tables, so that a desired change made on one node and a report taken
  // by another never overwrite each other when replicated (last write wins per row). JSON
  // documents with a version each. Logged for replication like migration 6's tables, and gone
  // with their device.
  `
  CREATE TABLE device_desired (
    id            TEXT PRIMARY KEY,
    doc           TEXT NOT NULL,
    version       INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    updated_by    TEXT
  ) WITHOUT ROWID;
  CREATE TABLE device_reported (
    id            TEXT PRIMARY KEY,
    doc           TEXT NOT NULL,
    version       INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    error         TEXT
  ) WITHOUT ROWID;
  CREATE TRIGGER devices_state_removed AFTER DELETE ON devices
    BEGIN DELETE FROM device_desired WHERE id = OLD.id; DELETE FROM device_reported WHERE id = OLD.id; END;
  CREATE TRIGGER device_desired_logged_add AFTER INSERT ON device_desired WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'device_desired' AND key = NEW.id;
      INSERT INTO local_changes (tbl, key, at) VALUES ('device_desired', NEW.id, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER device_desired_logged_remove AFTER DELETE ON device_desired WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'device_desired' AND key = OLD.id;
      INSERT INTO local_changes (tbl, key, at) VALUES ('device_desired', OLD.id, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER device_desired_logged_change AFTER UPDATE ON device_desired WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'device_desired' AND key = NEW.id;
      INSERT INTO local_changes (tbl, key, at) VALUES ('device_desired', NEW.id, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER device_reported_logged_add AFTER INSERT ON device_reported WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'device_reported' AND key = NEW.id;
      INSERT INTO local_changes (tbl, key, at) VALUES ('device_reported', NEW.id, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER device_reported_logged_remove AFTER DELETE ON device_reported WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'device_reported' AND key = OLD.id;
      INSERT INTO local_changes (tbl, key, at) VALUES ('device_reported', OLD.id, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  CREATE TRIGGER device_reported_logged_change AFTER UPDATE ON device_reported WHEN (SELECT applying FROM replication_state) = 0
    BEGIN DELETE FROM local_changes WHERE tbl = 'device_reported' AND key = NEW.id;
      INSERT INTO local_changes (tbl, key, at) VALUES ('device_reported', NEW.id, CAST(unixepoch('subsec') * 1000 AS INTEGER)); END;
  `,
  // 11: health telemetry (src/store/health.ts, docs/protocol.md "Health telemetry"): devices
  // numbered; one row per minute and device, keyed by minute first so that a minute's rows
  // are appended together and the oldest pruned as a range; rows per minute (for the row
  // cap); devices online each minute. Per node, not replicated; no link to the devices table
  // (a removed device's history goes with the retention).
  `
  CREATE TABLE health_devices (
    num           INTEGER PRIMARY KEY,
    device        TEXT NOT NULL UNIQUE,
    version       TEXT,
    cpus          INTEGER
  );
  CREATE TABLE health_minutes (
    minute        INTEGER NOT NULL,
    num           INTEGER NOT NULL,
    samples       INTEGER NOT NULL,
    load_n        INTEGER,
    load1         INTEGER,
    load1_max     INTEGER,
    load5         INTEGER,
    load15        INTEGER,
    mem_n         INTEGER,
    mem_total     INTEGER,
    mem_available INTEGER,
    mem_available_min INTEGER,
    disk_n        INTEGER,
    disk_total    INTEGER,
    disk_free     INTEGER,
    disk_free_min INTEGER,
    temp_n        INTEGER,
    temp          INTEGER,
    temp_max      INTEGER,
    uptime        INTEGER,
    PRIMARY KEY (minute, num)
  ) WITHOUT ROWID;
  CREATE TABLE health_minute_rows (
    minute        INTEGER PRIMARY KEY,
    rows          INTEGER NOT NULL
  );
  CREATE TABLE health_fleet (
    minute        INTEGER PRIMARY KEY,
    online        INTEGER NOT NULL,
    known         INTEGER NOT NULL
  );
  `,
  // 12: schedules (src/jobs/scheduler.ts): a job (as POST /api/jobs takes it) to create at a
  // time or on a cron expression; each hub node keeps its own, as it does its jobs
  `
  CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    created_at    INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    actor_kind    TEXT NOT NULL,
    remote        TEXT,
    name          TEXT,
    job           TEXT NOT NULL,
    at            INTEGER,
    cron          TEXT,
    tz            TEXT,
    enabled       INTEGER NOT NULL DEFAULT 1,
    next_at       INTEGER,
    last_run_at   INTEGER,
    last_job      TEXT,
    last_error    TEXT,
    runs          INTEGER NOT NULL DEFAULT 0
  );
  CREATE INDEX schedules_next_at ON schedules(next_at);
  `,
  // 13: a hub task's own settings per job (a deploy job's artifact and commands), as JSON
  `
  ALTER TABLE jobs ADD COLUMN params TEXT;
  `,
  // 14: alerts and webhooks (src/alerts/, docs/protocol.md "Alerts and webhooks"): rules with
  // their kind's fields as JSON; the alerts they fired, at most one firing per rule and subject
  // (a device or a job); webhooks (the secret in clear: it signs every delivery) and their
  // deliveries, each sent in order of seq per webhook and kept until delivered or given up.
  // Per node, not replicated, like jobs and schedules.
  `
  CREATE TABLE alert_rules (
    id            TEXT PRIMARY KEY,
    created_at    INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    name          TEXT,
    kind          TEXT NOT NULL CHECK (kind IN ('device_offline', 'telemetry', 'job')),
    enabled       INTEGER NOT NULL DEFAULT 1,
    spec          TEXT NOT NULL
  );
  CREATE TABLE alerts (
    id            TEXT PRIMARY KEY,
    rule_id       TEXT NOT NULL,
    rule_name     TEXT,
    kind          TEXT NOT NULL,
    subject       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('firing', 'resolved')),
    fired_at      INTEGER NOT NULL,
    resolved_at   INTEGER,
    resolved_by   TEXT,
    summary       TEXT NOT NULL,
    resolution    TEXT,
    detail        TEXT NOT NULL
  );
  CREATE UNIQUE INDEX alerts_one_firing ON alerts(rule_id, subject) WHERE state = 'firing';
  CREATE INDEX alerts_rule_subject ON alerts(rule_id, subject);
  CREATE INDEX alerts_state_fired ON alerts(state, fired_at);
  CREATE TABLE webhooks (
    id            TEXT PRIMARY KEY,
    created_at    INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    url           TEXT NOT NULL,
    secret        TEXT NOT NULL,
    events        TEXT NOT NULL
  );
  CREATE TABLE webhook_deliveries (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    webhook_id    TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event         TEXT NOT NULL,
    alert_id      TEXT NOT NULL,
    body          TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_status   INTEGER,
    last_error    TEXT
  );
  CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(state, webhook_id, seq);
  `,
];

/** The version of the credentials (devices, their tags, tokens, users): it changes with each of them. */
export function credentialsVersion(db: Db): () => number {
  const read = db.prepare<[], { version: number }>(`SELECT version FROM change_counters WHERE name = 'credentials'`);
  return () => read.get()?.version ?? 0;
}

export const SCHEMA_VERSION = MIGRATIONS.length;

export function openDatabase(dataDir: string): Db {
  mkdirSync(dataDir, { recursive: true });
  const db = new Database(join(dataDir, 'rhizosphere.db'));
  db.pragma('journal_mode = WAL');
  // The hub and an admin command may write at the same moment: wait rather than fail.
  db.pragma('busy_timeout = 5000');
  db.pragma('foreign_keys = ON');
  db.pragma('synchronous = NORMAL');
  migrate(db);
  return db;
}

function migrate(db: Db): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    throw new Error(`the database was written by a newer rhizosphere (schema ${current}, this one knows ${MIGRATIONS.length})`);
  }
  for (let version = current; version < MIGRATIONS.length; version++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[version]!);
      db.pragma(`user_version = ${version + 1}`);
    })();
  }
}
