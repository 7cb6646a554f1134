/**
 * The protobuf messages this client uses, as @grpc/proto-loader hands them over.
 *
 * Written by hand from protos/vastrpc/api/v1/*.proto and loaded with the options in
 * protos.ts: field names as in the .proto (snake_case), enums as their names, 64-bit
 * integers as numbers, bytes as Buffers, unset fields at their defaults, and `message`
 * naming the member of a oneof that is set.
 */

/** How a payload's bytes are encoded (common.proto `Encoding`). */
export type Encoding = 'ENCODING_UNSPECIFIED' | 'ENCODING_CLOUDPICKLE' | 'ENCODING_JSON';

/** The life of a worker (common.proto `WorkerState`). */
export type WorkerState =
  | 'WORKER_STATE_UNSPECIFIED'
  | 'WORKER_STATE_STARTING'
  | 'WORKER_STATE_DOWNLOADING'
  | 'WORKER_STATE_INSTALLING'
  | 'WORKER_STATE_PULLING'
  | 'WORKER_STATE_LOADING'
  | 'WORKER_STATE_BENCHMARKING'
  | 'WORKER_STATE_READY'
  | 'WORKER_STATE_DRAINING'
  | 'WORKER_STATE_STOPPED'
  | 'WORKER_STATE_FAILED';

/** The life of an endpoint (common.proto `EndpointState`). */
export type EndpointState =
  | 'ENDPOINT_STATE_UNSPECIFIED'
  | 'ENDPOINT_STATE_DEPLOYING'
  | 'ENDPOINT_STATE_READY'
  | 'ENDPOINT_STATE_FAILED'
  | 'ENDPOINT_STATE_STOPPED';

/** Why a call failed (worker.proto `ErrorKind`). */
export type ErrorKind =
  | 'ERROR_KIND_UNSPECIFIED'
  | 'ERROR_KIND_APPLICATION'
  | 'ERROR_KIND_FUNCTION_NOT_FOUND'
  | 'ERROR_KIND_BAD_ARGUMENTS'
  | 'ERROR_KIND_BAD_RESULT'
  | 'ERROR_KIND_CANCELLED'
  | 'ERROR_KIND_OVERLOADED'
  | 'ERROR_KIND_PROTOCOL'
  | 'ERROR_KIND_DRAINING';

/** A failure with enough context to act on (common.proto `Failure`). */
export interface Failure {
  step: string;
  message: string;
  log_tail: string;
}

/** A worker as the control service shows it (common.proto `Worker`). */
export interface Worker {
  worker_id: string;
  endpoint_id: string;
  revision_id: string;
  state: WorkerState;
  /** host:port of its WorkerService, once ready. */
  address: string;
  score: number;
  capacity: number;
  pid: number;
  failure: Failure | null;
  last_heartbeat: number;
}

/** control.proto `ListDeploymentsRequest`. */
export interface ListDeploymentsRequest {
  name: string;
}

/** An endpoint in a listing (control.proto `Endpoint`; the fields this client reads). */
export interface EndpointListing {
  endpoint_id: string;
  tag: string;
  state: EndpointState;
  revision_id: string;
  workers: Worker[];
  failure: Failure | null;
}

/** control.proto `Deployment`. */
export interface DeploymentListing {
  deployment_id: string;
  name: string;
  endpoints: EndpointListing[];
  created_at: number;
}

/** control.proto `ListDeploymentsResponse`. */
export interface ListDeploymentsResponse {
  deployments: DeploymentListing[];
}

/** control.proto `WatchEndpointRequest`. */
export interface WatchEndpointRequest {
  endpoint_id: string;
}

/** control.proto `WatchEndpointResponse`: the endpoint now, and after every change. */
export interface WatchEndpointResponse {
  endpoint_id: string;
  state: EndpointState;
  revision_id: string;
  workers: Worker[];
  /** The token the workers' Invoke requires. */
  endpoint_token: string;
  failure: Failure | null;
  desired_workers: number;
  /** Set on a message that only says the watch is alive; every other field is empty. */
  keepalive: boolean;
}

/** control.proto `WakeEndpointRequest`. */
export interface WakeEndpointRequest {
  endpoint_id: string;
}

/** control.proto `WakeEndpointResponse`. */
export interface WakeEndpointResponse {
  workers_started: number;
}

/** worker.proto `CallStart`: starts a call; CallData chunks follow when `more`. */
export interface CallStart {
  call_id: number;
  function: string;
  encoding: Encoding;
  data: Buffer;
  more: boolean;
  /** Seconds the caller waits; 0 for no limit. */
  timeout: number;
  /** Send the function's output back as CallLog messages (unset: false). */
  stream_logs?: boolean;
}

/** worker.proto `CallData`: a further chunk of a call's arguments. */
export interface CallData {
  call_id: number;
  data: Buffer;
  more: boolean;
}

/** worker.proto `CallCancel`. */
export interface CallCancel {
  call_id: number;
}

/** worker.proto `InvokeRequest`: one member of its oneof. */
export type InvokeRequest = { start: CallStart } | { data: CallData } | { cancel: CallCancel };

/** worker.proto `CallResult`: a chunk of a call's result. */
export interface CallResult {
  call_id: number;
  data: Buffer;
  /** More chunks of this value follow. */
  more: boolean;
  /** The final message of the call. */
  done: boolean;
  encoding: Encoding;
  buffer_sizes: number[];
}

/** worker.proto `CallError`: a call ended with an error. */
export interface CallErrorMessage {
  call_id: number;
  kind: ErrorKind;
  /** The exception's type name, e.g. "ValueError" or "mymodule.MyError". */
  type: string;
  message: string;
  traceback: string;
  pickled: Buffer;
}

/** Which output a CallLog comes from (worker.proto `LogStream`). */
export type LogStream = 'LOG_STREAM_UNSPECIFIED' | 'LOG_STREAM_STDOUT' | 'LOG_STREAM_STDERR';

/** worker.proto `CallLog`: output the function wrote during a call that asked for `stream_logs`. */
export interface CallLog {
  call_id: number;
  stream: LogStream;
  /** In order, but not split at line ends. */
  text: string;
}

/** worker.proto `InvokeResponse`; `message` names the member that is set. */
export interface InvokeResponse {
  message?: 'result' | 'error' | 'drain' | 'log';
  result?: CallResult | null;
  error?: CallErrorMessage | null;
  drain?: Record<string, never> | null;
  log?: CallLog | null;
}
