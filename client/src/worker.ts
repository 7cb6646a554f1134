/**
 * One worker's channel, with calls multiplexed over a long-lived Invoke stream.
 */

import * as grpc from '@grpc/grpc-js';

import {
  CallError,
  CallTimeoutError,
  FunctionNotFoundError,
  RemoteError,
  SerializationError,
  WorkerUnavailableError,
  errorFromStatus,
} from './errors';
import { channelOptions } from './control';
import type { CallErrorMessage, CallResult, InvokeRequest, InvokeResponse } from './messages';
import type { Method } from './protos';

/** Arguments travel in chunks of this size, as the Python client sends them. */
export const CHUNK_SIZE = 1 << 20;

/** The call never ran on that worker (draining, at its limits, unreachable): safe to send elsewhere. */
export class CallNotDelivered extends WorkerUnavailableError {
  constructor(
    message: string,
    /** The worker refused it for being at its limits (rather than going away). */
    readonly overloaded = false,
  ) {
    super(message);
  }
}

/** A call's encoded result and where it ran. */
export interface Received {
  data: Buffer;
  workerId: string;
  revisionId: string;
}

function callError(err: CallErrorMessage): Error {
  switch (err.kind) {
    case 'ERROR_KIND_APPLICATION':
      return new RemoteError(err.type, err.message, err.traceback);
    case 'ERROR_KIND_FUNCTION_NOT_FOUND':
      return new FunctionNotFoundError(err.message);
    case 'ERROR_KIND_BAD_ARGUMENTS':
    case 'ERROR_KIND_BAD_RESULT':
      return new SerializationError(err.message);
    case 'ERROR_KIND_CANCELLED':
      return new CallTimeoutError(err.message);
    case 'ERROR_KIND_OVERLOADED':
      return new CallNotDelivered(err.message, true);
    case 'ERROR_KIND_DRAINING':
      return new CallNotDelivered(err.message);
    default:
      return new CallError(`${err.kind}: ${err.message}`);
  }
}

/** Which of the function's outputs a piece of captured text comes from. */
export type OutputStream = 'stdout' | 'stderr';

/**
 * Takes what a function prints or logs while it runs a call: text in order, not split at line ends.
 * It runs on the client's event loop, so it should return quickly.
 */
export type LogHandler = (stream: OutputStream, text: string) => void;

/** What a call's queue holds: a whole value (and whether it ends the call), or the error that ended it. */
type Item = { data: Buffer; done: boolean } | { error: Error };

/** A call waiting for its answers: the values and errors the read side hands over, kept in order. */
class Pending {
  /** The chunks of the value being received. */
  parts: Buffer[] = [];
  private readonly items: Item[] = [];
  private waiter: ((item: Item) => void) | null = null;

  constructor(private onLog: LogHandler | undefined) {}

  push(item: Item): void {
    const waiter = this.waiter;
    if (waiter !== null) {
      this.waiter = null;
      waiter(item);
    } else {
      // A generator may run ahead of a slow consumer: its values wait here.
      this.items.push(item);
    }
  }

  /** The next item; one caller at a time (a call has one consumer). */
  next(): Promise<Item> {
    const item = this.items.shift();
    if (item !== undefined) {
      return Promise.resolve(item);
    }
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  log(stream: OutputStream, text: string): void {
    if (this.onLog === undefined) {
      return;
    }
    try {
      this.onLog(stream, text);
    } catch (err) {
      // The caller's own handler failed: end the call with its error (and call it no more).
      this.onLog = undefined;
      this.push({ error: err instanceof Error ? err : new CallError(`the onLog handler threw ${String(err)}`) });
    }
  }
}

/**
 * A bidirectional Invoke stream carrying many calls at once, each tagged with its call id.
 *
 * Nothing is written before the worker's handler answers with its initial metadata, so a
 * stream that fails earlier provably delivered no call (and the call may go elsewhere).
 */
class InvokeStream {
  private readonly call: grpc.ClientDuplexStream<InvokeRequest, InvokeResponse>;
  // Calls not yet answered in full: a call leaves on its final value or its error.
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  // Writes queue here so that one call's chunks go out together.
  private writing: Promise<void> = Promise.resolve();
  private readonly opened: Promise<void>;
  private established = false;
  private halfClosed = false;
  revisionId = '';
  workerId = '';
  closed = false;
  /** The worker asked for no more calls on this stream (it is stopping or switching revisions). */
  draining = false;

  constructor(
    client: grpc.Client,
    method: Method<InvokeRequest, InvokeResponse>,
    token: string,
    private readonly label: string,
  ) {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${token}`);
    const { path, requestSerialize, responseDeserialize } = method;
    this.call = client.makeBidiStreamRequest(path, requestSerialize, responseDeserialize, metadata);
    this.opened = new Promise<void>((resolve, reject) => {
      this.call.on('metadata', (md: grpc.Metadata) => {
        const worker = md.get('vastrpc-worker-id')[0];
        // A refusal before the handler (a bad token) carries no worker id.
        this.established = worker !== undefined;
        this.workerId = worker !== undefined ? String(worker) : '';
        this.revisionId = String(md.get('vastrpc-revision')[0] ?? '');
        resolve();
      });
      this.call.on('status', (status: grpc.StatusObject) => {
        const error = this.ended(status);
        reject(error);
      });
    });
    this.opened.catch(() => undefined); // a stream that fails unused has nobody to tell
    this.call.on('data', (response: InvokeResponse) => this.onResponse(response));
    this.call.on('error', () => undefined); // reported through 'status'
  }

  get callsInFlight(): number {
    return this.pending.size;
  }

  private ended(status: grpc.StatusObject): Error {
    this.closed = true;
    let error: Error;
    if (status.code === grpc.status.OK) {
      error = new WorkerUnavailableError(`${this.label} closed the stream during the call`);
    } else if (!this.established && status.code === grpc.status.UNAVAILABLE) {
      error = new CallNotDelivered(`cannot reach ${this.label}: ${status.details}`);
    } else {
      error = errorFromStatus(status, this.label, WorkerUnavailableError);
    }
    this.failAll(error);
    return error;
  }

  private failAll(error: Error): void {
    for (const pending of this.pending.values()) {
      pending.push({ error });
    }
    this.pending.clear();
  }

  private onResponse(response: InvokeResponse): void {
    if (response.message === 'result' && response.result) {
      this.onResult(response.result);
    } else if (response.message === 'error' && response.error) {
      const pending = this.pending.get(response.error.call_id);
      if (pending !== undefined) {
        this.pending.delete(response.error.call_id);
        pending.push({ error: callError(response.error) });
      }
    } else if (response.message === 'log' && response.log) {
      const stream = response.log.stream === 'LOG_STREAM_STDERR' ? 'stderr' : 'stdout';
      this.pending.get(response.log.call_id)?.log(stream, response.log.text);
    } else if (response.message === 'drain') {
      this.draining = true;
      if (this.pending.size === 0) {
        this.closeSending();
      }
    }
  }

  private onResult(result: CallResult): void {
    const pending = this.pending.get(result.call_id);
    if (pending === undefined) {
      return;
    }
    pending.parts.push(result.data);
    if (result.more) {
      return;
    }
    const data = pending.parts.length === 1 ? pending.parts[0]! : Buffer.concat(pending.parts);
    pending.parts = [];
    if (result.done) {
      // Answered in full: nothing to cancel when the caller is done with it.
      this.pending.delete(result.call_id);
    }
    pending.push({ data, done: result.done });
  }

  private open(onLog: LogHandler | undefined): [number, Pending] {
    if (this.closed || this.draining) {
      throw new CallNotDelivered(`the stream to ${this.label} takes no more calls`);
    }
    const callId = this.nextId++;
    const pending = new Pending(onLog);
    this.pending.set(callId, pending);
    return [callId, pending];
  }

  private finish(callId: number, sent: boolean): void {
    if (this.pending.delete(callId) && sent) {
      // The caller gave up before the call ended (timed out, stopped iterating, an error): stop it on the worker.
      void this.cancel(callId);
    }
    if (this.draining && this.pending.size === 0) {
      this.closeSending();
    }
  }

  /** `promise`, or CallTimeoutError once `deadline` (ms since the epoch) has passed. */
  private async bounded<T>(promise: Promise<T>, deadline: number | null, fn: string, timeoutSeconds?: number): Promise<T> {
    if (deadline === null) {
      return promise;
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new CallTimeoutError(
              `${fn} did not finish within ${timeoutSeconds}s: ${this.label} did not take it in time (it never ran there)`,
            ),
          ),
        Math.max(0, deadline - Date.now()),
      );
    });
    try {
      return await Promise.race([promise, timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The call's next item, or CallTimeoutError once `deadline` (ms since the epoch) has passed. */
  private async next(pending: Pending, deadline: number | null, fn: string, timeoutSeconds?: number): Promise<Item> {
    const item = pending.next();
    if (deadline === null) {
      return item;
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new CallTimeoutError(`${fn} did not finish within ${timeoutSeconds}s`)),
        Math.max(0, deadline - Date.now()),
      );
    });
    try {
      return await Promise.race([item, timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Run one call on this stream and resolve to its encoded result. */
  async invoke(fn: string, payload: Buffer, timeoutSeconds: number | undefined, onLog?: LogHandler): Promise<Buffer> {
    const [callId, pending] = this.open(onLog);
    let sent = false;
    const deadline = timeoutSeconds ? Date.now() + timeoutSeconds * 1000 : null;
    try {
      // The timeout bounds the wait for the stream to open too (a worker that stopped answering never opens it).
      await this.bounded(this.opened, deadline, fn, timeoutSeconds);
      await this.send(callId, fn, payload, timeoutSeconds, onLog !== undefined);
      sent = true;
      const item = await this.next(pending, deadline, fn, timeoutSeconds);
      if ('error' in item) {
        throw item.error;
      }
      if (!item.done) {
        // A value that does not end the call: the function is an async generator (finish() cancels it).
        throw new CallError(
          `${fn} is an async generator function: iterate its values with endpoint.stream() instead of call()`,
        );
      }
      return item.data;
    } finally {
      this.finish(callId, sent);
    }
  }

  /**
   * Run a generator call on this stream, yielding each encoded value as the worker sends it.
   *
   * Leaving early (the consumer's return() or throw()) cancels the call on the worker.
   */
  async *stream(
    fn: string,
    payload: Buffer,
    timeoutSeconds: number | undefined,
    onLog?: LogHandler,
  ): AsyncGenerator<Buffer, void, undefined> {
    const [callId, pending] = this.open(onLog);
    let sent = false;
    const deadline = timeoutSeconds ? Date.now() + timeoutSeconds * 1000 : null;
    try {
      await this.bounded(this.opened, deadline, fn, timeoutSeconds);
      await this.send(callId, fn, payload, timeoutSeconds, onLog !== undefined);
      sent = true;
      for (;;) {
        const item = await this.next(pending, deadline, fn, timeoutSeconds);
        if ('error' in item) {
          throw item.error;
        }
        if (item.done) {
          // A generator ends with an empty done message; a plain function's one value carries done.
          if (item.data.length > 0) {
            throw new CallError(
              `${fn} is a plain async function, not an async generator: await endpoint.call() instead of stream()`,
            );
          }
          return;
        }
        yield item.data;
      }
    } finally {
      this.finish(callId, sent);
    }
  }

  private write(message: InvokeRequest): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(new Error('the stream has ended'));
        return;
      }
      this.call.write(message, (err?: Error | null) => (err ? reject(err) : resolve()));
    });
  }

  private enqueue(messages: InvokeRequest[]): Promise<void> {
    const job = this.writing.then(async () => {
      for (const message of messages) {
        await this.write(message);
      }
    });
    this.writing = job.catch(() => undefined);
    return job;
  }

  private async send(
    callId: number,
    fn: string,
    payload: Buffer,
    timeoutSeconds: number | undefined,
    streamLogs: boolean,
  ): Promise<void> {
    const messages: InvokeRequest[] = [
      {
        start: {
          call_id: callId,
          function: fn,
          encoding: 'ENCODING_JSON',
          data: payload.subarray(0, CHUNK_SIZE),
          more: payload.length > CHUNK_SIZE,
          timeout: timeoutSeconds ?? 0,
          stream_logs: streamLogs,
        },
      },
    ];
    for (let offset = CHUNK_SIZE; offset < payload.length; offset += CHUNK_SIZE) {
      messages.push({
        data: {
          call_id: callId,
          data: payload.subarray(offset, offset + CHUNK_SIZE),
          more: offset + CHUNK_SIZE < payload.length,
        },
      });
    }
    try {
      await this.enqueue(messages);
    } catch (err) {
      // The worker never got the whole call, so it never ran.
      throw new CallNotDelivered(`cannot send the call to ${this.label}: ${(err as Error).message}`);
    }
  }

  private async cancel(callId: number): Promise<void> {
    try {
      await this.enqueue([{ cancel: { call_id: callId } }]);
    } catch {
      // The stream is gone: the worker cancels the calls of a dead stream itself.
    }
  }

  private closeSending(): void {
    // Half-close: the worker ends the stream once it has answered everything.
    if (!this.halfClosed && !this.closed) {
      this.halfClosed = true;
      void this.writing.then(() => this.call.end());
    }
  }

  /** Cancel the stream; calls in flight fail with WorkerUnavailableError. */
  close(): void {
    if (this.closed) {
      return;
    }
    this.closed = true;
    this.failAll(new WorkerUnavailableError(`the connection to ${this.label} was closed during the call`));
    this.call.cancel();
  }
}

/** A channel to one worker's serving process and its Invoke stream, with the figures the router balances on. */
export class WorkerConnection {
  private readonly client: grpc.Client;
  private invokeStream: InvokeStream | null = null;
  private closing: NodeJS.Timeout | null = null;
  /** Calls sent and not yet answered. */
  inFlight = 0;
  /** Calls sent here so far. */
  calls = 0;

  constructor(
    readonly workerId: string,
    readonly address: string,
    readonly token: string,
    credentials: grpc.ChannelCredentials,
    private readonly method: Method<InvokeRequest, InvokeResponse>,
  ) {
    this.client = new grpc.Client(address, credentials, channelOptions(address));
  }

  private get label(): string {
    return `worker ${this.workerId} at ${this.address}`;
  }

  /** The worker's serving process is stopping or switching revisions: route no new calls here. */
  get draining(): boolean {
    return this.invokeStream !== null && this.invokeStream.draining && !this.invokeStream.closed;
  }

  private live(): InvokeStream {
    if (this.invokeStream === null || this.invokeStream.closed) {
      this.invokeStream = new InvokeStream(this.client, this.method, this.token, this.label);
    }
    return this.invokeStream;
  }

  /** Run a call; resolves to its encoded result and the worker and revision that served it. */
  async invoke(fn: string, payload: Buffer, timeoutSeconds: number | undefined, onLog?: LogHandler): Promise<Received> {
    const stream = this.live();
    this.inFlight += 1;
    this.calls += 1;
    try {
      const data = await stream.invoke(fn, payload, timeoutSeconds, onLog);
      return { data, workerId: stream.workerId || this.workerId, revisionId: stream.revisionId };
    } finally {
      this.inFlight -= 1;
    }
  }

  /** Run a generator call, yielding its encoded values as they come; it counts as in flight until it ends. */
  async *stream(
    fn: string,
    payload: Buffer,
    timeoutSeconds: number | undefined,
    onLog?: LogHandler,
  ): AsyncGenerator<Buffer, void, undefined> {
    const stream = this.live();
    this.inFlight += 1;
    this.calls += 1;
    try {
      yield* stream.stream(fn, payload, timeoutSeconds, onLog);
    } finally {
      this.inFlight -= 1;
    }
  }

  /** Close now: calls in flight fail with WorkerUnavailableError. */
  close(): void {
    if (this.closing !== null) {
      clearInterval(this.closing);
      this.closing = null;
    }
    this.invokeStream?.close();
    this.client.close();
  }

  /** Close once the calls in flight are answered (at most `limitMs` from now). */
  closeWhenIdle(limitMs = 600_000): void {
    if (this.inFlight === 0) {
      this.close();
      return;
    }
    const deadline = Date.now() + limitMs;
    this.closing = setInterval(() => {
      if (this.inFlight === 0 || Date.now() >= deadline) {
        this.close();
      }
    }, 50);
    // The calls themselves keep the process alive; this check alone should not.
    this.closing.unref();
  }
}
