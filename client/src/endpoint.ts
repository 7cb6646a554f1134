/**
 * An endpoint's ready workers, kept current through the control service's watch, and calls routed to them.
 */

import * as grpc from '@grpc/grpc-js';

import type { ControlConnection } from './control';
import {
  CallError,
  ControlServiceError,
  ControlUnavailableError,
  DeploymentError,
  NoReadyWorkerError,
  OverloadedError,
  SerializationError,
} from './errors';
import type { WatchEndpointResponse } from './messages';
import { CallNotDelivered, WorkerConnection } from './worker';
import type { LogHandler } from './worker';

/**
 * Seconds an endpoint watch may carry nothing: the control service sends a keepalive after at
 * most 10 s of quiet, so a longer silence is a stream stuck somewhere; watch again.
 */
const WATCH_SILENCE_S = 30;

/** A call's result and where it ran. */
export interface CallInfo<T> {
  /** What the function returned, decoded from JSON. */
  value: T;
  /** The worker that ran it. */
  workerId: string;
  /** The revision of the deployment that served it. */
  revisionId: string;
  /** Seconds from the call to its result, retries on other workers included. */
  seconds: number;
}

/** Per-call settings. */
export interface CallOptions {
  /** Seconds the call may run; the worker cancels it after that (CallTimeoutError). No limit when unset. */
  timeout?: number;
  /** Seconds to wait for a ready worker; the endpoint's default when unset. */
  readyTimeout?: number;
  /**
   * Takes what the function prints or logs during the call (`'stdout'` or `'stderr'`, then the text, in order
   * but not split at line ends). When set, the worker sends the call's output back (it logs it either way);
   * unset, none is sent. An error it throws ends the call.
   */
  onLog?: LogHandler;
}

/** A ready worker as the router sees it. */
export interface WorkerStatus {
  workerId: string;
  address: string;
  /** Calls sent to it and not yet answered. */
  inFlight: number;
  /** Calls this client has sent to it. */
  calls: number;
}

/** Encode a call's arguments as the worker expects JSON: `{"args": [...], "kwargs": {...}}`. */
export function encodeArguments(args: unknown[], kwargs: Record<string, unknown>): Buffer {
  if (!Array.isArray(args)) {
    throw new SerializationError('args must be an array of positional arguments');
  }
  if (kwargs === null || typeof kwargs !== 'object' || Array.isArray(kwargs)) {
    throw new SerializationError('kwargs must be a plain object of keyword arguments');
  }
  try {
    return Buffer.from(JSON.stringify({ args, kwargs }), 'utf8');
  } catch (err) {
    throw new SerializationError(`the arguments are not JSON-serialisable: ${(err as Error).message}`);
  }
}

/** Decode a JSON result. */
export function decodeResult<T>(data: Buffer, fn: string): T {
  try {
    return JSON.parse(data.toString('utf8')) as T;
  } catch (err) {
    throw new SerializationError(
      `the result of ${fn} is not valid JSON (${(err as Error).message}); ` +
        'a Python float NaN or Infinity has no JSON form: return None or a string instead',
    );
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Worker ids in code-point order (stable, and the order Python's sorted() gives). */
const byWorkerId = (a: { workerId: string }, b: { workerId: string }): number =>
  a.workerId < b.workerId ? -1 : a.workerId > b.workerId ? 1 : 0;

/**
 * One endpoint (a deployment name and tag): its state, its ready workers and a connection to each.
 *
 * Get one with `VastrpcClient.endpoint()`; call `close()` when done (the client's close does it too).
 */
export class Endpoint {
  private readonly workers = new Map<string, WorkerConnection>();
  private state: WatchEndpointResponse | null = null;
  private watchError: Error | null = null;
  private watchCall: grpc.ClientReadableStream<WatchEndpointResponse> | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private retryDelayMs = 200;
  private readonly listeners = new Set<() => void>();
  private waking: Promise<void> | null = null;
  private turn = 0;
  private closed = false;

  /** @internal Made by VastrpcClient.endpoint(). */
  constructor(
    private readonly control: ControlConnection,
    /** The deployment's name. */
    readonly name: string,
    /** Its tag. */
    readonly tag: string,
    /** The endpoint's id on the control service. */
    readonly endpointId: string,
    /** Seconds a call waits for a ready worker by default. */
    readonly readyTimeout: number,
  ) {}

  /** @internal Start watching; resolves on the first update, rejects if the watch fails first. */
  start(): Promise<void> {
    this.watch();
    return new Promise((resolve, reject) => {
      const settled = (): boolean => {
        if (this.state !== null) {
          resolve();
          return true;
        }
        if (this.watchError !== null || this.closed) {
          reject(this.watchError ?? new CallError('the endpoint was closed'));
          return true;
        }
        return false;
      };
      if (!settled()) {
        const listener = (): void => {
          if (settled()) {
            this.listeners.delete(listener);
          }
        };
        this.listeners.add(listener);
      }
    });
  }

  private notify(): void {
    for (const listener of [...this.listeners]) {
      listener();
    }
  }

  private watch(): void {
    if (this.closed) {
      return;
    }
    const address = this.control.address;
    const call = this.control.watch(this.endpointId);
    this.watchCall = call;
    let silent = false;
    let silence: NodeJS.Timeout | undefined;
    const heard = (): void => {
      clearTimeout(silence);
      silence = setTimeout(() => {
        silent = true;
        call.cancel();
      }, WATCH_SILENCE_S * 1000);
    };
    heard();
    call.on('data', (update: WatchEndpointResponse) => {
      heard();
      this.retryDelayMs = 200;
      if (!update.keepalive) {
        this.apply(update);
      }
    });
    call.on('error', () => undefined); // reported through 'status'
    call.on('status', (status: grpc.StatusObject) => {
      clearTimeout(silence);
      if (this.watchCall !== call || this.closed) {
        return;
      }
      this.watchCall = null;
      // Keep serving from the known workers while the control service is away.
      if (silent) {
        this.watchError = new ControlUnavailableError(
          `the endpoint watch on the control service at ${address} carried nothing for ${WATCH_SILENCE_S}s`,
        );
      } else {
        this.watchError =
          status.code === grpc.status.OK
            ? new ControlServiceError('the control service ended the endpoint watch')
            : this.control.error(status);
      }
      this.notify();
      // Another control service shares the state: resume the watch there at once.
      const switched = (silent || status.code === grpc.status.UNAVAILABLE) && this.control.switch(address);
      this.retryTimer = setTimeout(
        () => {
          this.retryTimer = null;
          this.watch();
        },
        switched ? 50 : this.retryDelayMs,
      );
      if (!switched) {
        this.retryDelayMs = Math.min(this.retryDelayMs * 2, 5000);
      }
    });
  }

  private apply(update: WatchEndpointResponse): void {
    // Every ready worker takes calls, whichever revision it serves: during an update the
    // old revision keeps serving until the new one is ready.
    const ready = new Map(
      update.workers.filter((w) => w.state === 'WORKER_STATE_READY' && w.address).map((w) => [w.worker_id, w]),
    );
    const failed = new Set(update.workers.filter((w) => w.state === 'WORKER_STATE_FAILED').map((w) => w.worker_id));
    for (const [workerId, conn] of [...this.workers]) {
      if (failed.has(workerId)) {
        // Declared lost: its calls in flight will never be answered, so they fail now.
        this.workers.delete(workerId);
        conn.close();
      } else if (!ready.has(workerId)) {
        // Draining or stopped: calls in flight finish on their own.
        this.workers.delete(workerId);
        conn.closeWhenIdle();
      }
    }
    for (const [workerId, w] of ready) {
      const conn = this.workers.get(workerId);
      if (conn === undefined || conn.address !== w.address || conn.token !== update.endpoint_token) {
        conn?.closeWhenIdle();
        const { credentials, methods } = this.control;
        this.workers.set(
          workerId,
          new WorkerConnection(workerId, w.address, update.endpoint_token, credentials, methods.invoke),
        );
      }
    }
    this.state = update;
    this.watchError = null;
    this.notify();
  }

  /** The ready workers this client routes to, with their load. */
  readyWorkers(): WorkerStatus[] {
    return [...this.workers.values()]
      .map((c) => ({ workerId: c.workerId, address: c.address, inFlight: c.inFlight, calls: c.calls }))
      .sort(byWorkerId);
  }

  private describeWorkers(): string {
    const workers = this.state?.workers ?? [];
    if (workers.length === 0) {
      return 'no worker has registered';
    }
    return workers
      .map((w) => `${w.worker_id}: ${w.state.replace('WORKER_STATE_', '').toLowerCase()}`)
      .join(', ');
  }

  /** Fewest calls in flight; round robin among workers that tie. */
  private choose(candidates: WorkerConnection[]): WorkerConnection {
    const fewest = Math.min(...candidates.map((c) => c.inFlight));
    const tied = candidates
      .filter((c) => c.inFlight === fewest)
      .sort(byWorkerId);
    const chosen = tied[this.turn % tied.length]!;
    this.turn = (this.turn + 1) % 1_000_000;
    return chosen;
  }

  private waitForChange(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.listeners.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.listeners.add(done);
    });
  }

  /** Ask the control service for workers (the endpoint may have scaled to zero): one request at a time. */
  private wake(): void {
    if (this.waking === null) {
      this.waking = this.control
        .wake(this.endpointId)
        .then(() => undefined)
        .catch(() => undefined) // the watch reports what matters (stopped, failed)
        .finally(() => {
          this.waking = null;
        });
    }
  }

  /**
   * After a failed attempt: rethrows unless the call never ran (the worker was draining, at its
   * limits, or unreachable) and time is left; then notes an overloaded worker and backs off, so the
   * caller can try another worker.
   */
  private async retryElsewhereOrThrow(
    err: unknown,
    conn: WorkerConnection,
    overloaded: Set<string>,
    deadline: number,
    attempt: number,
  ): Promise<void> {
    if (!(err instanceof CallNotDelivered)) {
      throw err;
    }
    if (Date.now() >= deadline) {
      throw new CallNotDelivered(
        `the call never ran: ${err.message} (no worker took it in time, after ${attempt} attempt(s)); ` +
          'it is safe to call again. See `vastrpc ls` for the endpoint\'s workers',
      );
    }
    if (err.overloaded) {
      overloaded.add(conn.workerId);
    }
    await sleep(Math.min(10 * attempt, 200, Math.max(0, deadline - Date.now())));
  }

  private async pick(deadline: number, overloaded: Set<string>, waitSeconds: number): Promise<WorkerConnection> {
    for (;;) {
      if (this.closed) {
        throw new CallError(`the endpoint ${this.name}/${this.tag} was closed`);
      }
      if (this.state?.state === 'ENDPOINT_STATE_STOPPED') {
        throw new DeploymentError(
          `the endpoint ${this.name}/${this.tag} was torn down; deploy it again (await app.ensure_ready() in Python)`,
        );
      }
      const candidates = [...this.workers.values()].filter((c) => !c.draining);
      const fresh = candidates.filter((c) => !overloaded.has(c.workerId));
      if (fresh.length > 0) {
        return this.choose(fresh);
      }
      if (candidates.length > 0) {
        throw new OverloadedError(
          `every worker of ${this.name}/${this.tag} (${candidates.length}) is at its limits: the call waited past ` +
            'max_queue_time or found a full queue. Raise max_workers, max_concurrency or max_queue_time',
        );
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        const failure = this.state?.failure?.message ? `; the endpoint failed: ${this.state.failure.message}` : '';
        const watch = this.watchError ? `; the watch failed: ${this.watchError.message}` : '';
        throw new NoReadyWorkerError(
          `no ready worker on ${this.name}/${this.tag} (endpoint ${this.endpointId}) after ${waitSeconds}s ` +
            `(${this.describeWorkers()}${failure}${watch}); see \`vastrpc ls\` and \`vastrpc logs WORKER_ID\``,
        );
      }
      this.wake();
      // Woken by the watch; the short bound re-checks workers that stopped draining.
      await this.waitForChange(Math.min(remaining, 500));
    }
  }

  /**
   * Call a deployed function with JSON arguments and resolve to its decoded JSON result.
   *
   * @param fn The function's name.
   * @param args Positional arguments.
   * @param kwargs Keyword arguments.
   * @param options A timeout for the call, and how long to wait for a ready worker.
   * @throws RemoteError when the function raised; NoReadyWorkerError when no worker was ready in time;
   *   other CallError subclasses for the rest (see errors.ts).
   */
  async call<T = unknown>(
    fn: string,
    args: unknown[] = [],
    kwargs: Record<string, unknown> = {},
    options: CallOptions = {},
  ): Promise<T> {
    return (await this.callWithInfo<T>(fn, args, kwargs, options)).value;
  }

  /** Like `call`, and also says which worker and revision served the call and how long it took. */
  async callWithInfo<T = unknown>(
    fn: string,
    args: unknown[] = [],
    kwargs: Record<string, unknown> = {},
    options: CallOptions = {},
  ): Promise<CallInfo<T>> {
    const payload = encodeArguments(args, kwargs);
    const started = Date.now();
    const [deadline, waitSeconds, left] = this.deadlines(started, options);
    const overloaded = new Set<string>();
    for (let attempt = 1; ; attempt++) {
      const conn = await this.pick(deadline, overloaded, waitSeconds);
      let received;
      try {
        received = await conn.invoke(fn, payload, left(), options.onLog);
      } catch (err) {
        await this.retryElsewhereOrThrow(err, conn, overloaded, deadline, attempt);
        continue;
      }
      return {
        value: decodeResult<T>(received.data, fn),
        workerId: received.workerId,
        revisionId: received.revisionId,
        seconds: (Date.now() - started) / 1000,
      };
    }
  }

  /**
   * Call a deployed async generator function and iterate its values, decoded from JSON, as the worker yields them.
   *
   * The call starts on the first `next()` (the first turn of a `for await` loop). Leaving the loop early
   * (`break`, `return` or an exception) cancels the call: the generator stops on the worker and its `finally`
   * blocks run there. A call a worker refused before running it (draining, at its limits) goes to another
   * worker; once a value has arrived, a failure ends the iteration with its error. Values the consumer has not
   * asked for yet wait in memory.
   *
   * @example
   * for await (const token of endpoint.stream<string>('generate', ['a prompt'])) {
   *   process.stdout.write(token);
   * }
   *
   * @param fn The generator function's name.
   * @param args Positional arguments.
   * @param kwargs Keyword arguments.
   * @param options `timeout` bounds the whole call (every value); `readyTimeout` the wait for a ready worker.
   * @throws (from the iterator) RemoteError when the generator raised (after the values it yielded);
   *   CallError when `fn` is a plain async function (use `call`); the others as for `call`.
   */
  async *stream<T = unknown>(
    fn: string,
    args: unknown[] = [],
    kwargs: Record<string, unknown> = {},
    options: CallOptions = {},
  ): AsyncGenerator<T, void, undefined> {
    const payload = encodeArguments(args, kwargs);
    const [deadline, waitSeconds, left] = this.deadlines(Date.now(), options);
    const overloaded = new Set<string>();
    for (let attempt = 1; ; attempt++) {
      const conn = await this.pick(deadline, overloaded, waitSeconds);
      const values = conn.stream(fn, payload, left(), options.onLog);
      let first: IteratorResult<Buffer, void>;
      try {
        first = await values.next();
      } catch (err) {
        // Refused before its first value: another worker may take it. Past it, it may have run: never repeated.
        await this.retryElsewhereOrThrow(err, conn, overloaded, deadline, attempt);
        continue;
      }
      try {
        for (let item = first; !item.done; item = await values.next()) {
          yield decodeResult<T>(item.value, fn);
        }
      } finally {
        // A no-op once the call has ended; otherwise it runs the inner finally, which sends CallCancel.
        await values.return(undefined);
      }
      return;
    }
  }

  /**
   * When a call stops waiting for a worker (the ready wait or its own timeout, whichever ends first), the
   * seconds that bound is, and what is left of the call's timeout when it is sent.
   */
  private deadlines(started: number, options: CallOptions): [number, number, () => number | undefined] {
    const ready = options.readyTimeout ?? this.readyTimeout;
    const timeout = options.timeout;
    const waitSeconds = timeout !== undefined && timeout < ready ? timeout : ready;
    const left = (): number | undefined =>
      timeout === undefined ? undefined : Math.max(0.001, (started + timeout * 1000 - Date.now()) / 1000);
    return [started + waitSeconds * 1000, waitSeconds, left];
  }

  /** Stop watching and close every worker connection; calls in flight fail. */
  close(): void {
    if (this.closed) {
      return;
    }
    this.closed = true;
    if (this.retryTimer !== null) {
      clearTimeout(this.retryTimer);
    }
    this.watchCall?.cancel();
    this.watchCall = null;
    for (const conn of this.workers.values()) {
      conn.close();
    }
    this.workers.clear();
    this.notify();
  }
}

