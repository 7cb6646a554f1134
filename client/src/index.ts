/**
 * vastrpc's TypeScript client for Node.js: call deployed Python functions with JSON arguments.
 */

export { VastrpcClient } from './client';
export type { ClientOptions } from './client';
export type { TlsOptions } from './control';
export { Endpoint, decodeResult, encodeArguments } from './endpoint';
export type { CallInfo, CallOptions, WorkerStatus } from './endpoint';
export type { LogHandler, OutputStream } from './worker';
export {
  AuthenticationError,
  CallError,
  CallTimeoutError,
  ControlServiceError,
  ControlUnavailableError,
  DeploymentError,
  FunctionNotFoundError,
  NoReadyWorkerError,
  NotFoundError,
  OverloadedError,
  RemoteError,
  SerializationError,
  VastrpcError,
  WorkerUnavailableError,
} from './errors';
export { DEFAULT_PROTOS_DIR, loadMethods } from './protos';
export type * from './messages';
