/**
 * The errors this client raises; the tree mirrors vastrpc's Python exceptions (vastrpc/_errors.py).
 */

import * as grpc from '@grpc/grpc-js';

/** The base of every error this client raises. */
export class VastrpcError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The control service failed a request. */
export class ControlServiceError extends VastrpcError {}

/** The control service cannot be reached, or a TLS file for it cannot be read. */
export class ControlUnavailableError extends ControlServiceError {}

/** The control service or a worker refused the credentials (API key, endpoint token, certificate). */
export class AuthenticationError extends ControlServiceError {}

/** No such deployment or endpoint. */
export class NotFoundError extends VastrpcError {}

/** The endpoint was torn down or failed. */
export class DeploymentError extends VastrpcError {}

/** A call failed. */
export class CallError extends VastrpcError {}

/** The worker has no function of that name. */
export class FunctionNotFoundError extends CallError {}

/** The worker could not be reached or went away during the call. */
export class WorkerUnavailableError extends CallError {}

/** No worker of the endpoint was ready within the wait. */
export class NoReadyWorkerError extends WorkerUnavailableError {}

/** Every ready worker refused the call for being at its limits. */
export class OverloadedError extends WorkerUnavailableError {}

/** The call ran past its timeout (the worker cancelled it) or was cancelled. */
export class CallTimeoutError extends CallError {}

/** Arguments or a result that are not JSON, or that the function could not accept. */
export class SerializationError extends CallError {}

/**
 * The remote Python function raised.
 *
 * `message` reads "Type: message"; the parts are kept apart in `type`, `remoteMessage` and
 * `remoteTraceback` (the formatted Python traceback, also appended to `stack`).
 */
export class RemoteError extends CallError {
  /** The exception's type name: "ValueError" for a builtin, "module.Class" otherwise. */
  readonly type: string;
  /** `str(exc)` on the worker. */
  readonly remoteMessage: string;
  /** The remote traceback, formatted by Python. */
  readonly remoteTraceback: string;

  constructor(type: string, message: string, traceback: string) {
    super(message ? `${type}: ${message}` : type);
    this.type = type;
    this.remoteMessage = message;
    this.remoteTraceback = traceback;
    if (traceback) {
      this.stack = `${this.stack ?? ''}\nRemote traceback:\n${traceback}`;
    }
  }
}

/** A failed gRPC call as one of the errors above; `unavailable` is the type for UNAVAILABLE. */
export function errorFromStatus(
  status: { code: grpc.status; details: string },
  target: string,
  unavailable: new (message: string) => VastrpcError = ControlUnavailableError,
): VastrpcError {
  const details = status.details || grpc.status[status.code] || String(status.code);
  switch (status.code) {
    case grpc.status.UNAVAILABLE:
      return new unavailable(`cannot reach ${target}: ${details}`);
    case grpc.status.UNAUTHENTICATED:
    case grpc.status.PERMISSION_DENIED:
      return new AuthenticationError(`${target} refused the credentials: ${details}`);
    case grpc.status.NOT_FOUND:
      return new NotFoundError(details);
    case grpc.status.DEADLINE_EXCEEDED:
      return new CallTimeoutError(`${target} did not answer in time: ${details}`);
    case grpc.status.FAILED_PRECONDITION:
      return new DeploymentError(details);
    default:
      return new ControlServiceError(`${target} failed the request (${grpc.status[status.code]}): ${details}`);
  }
}
