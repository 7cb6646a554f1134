/**
 * One channel to the control service, presenting the API key on every call.
 */

import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';

import { ControlUnavailableError, errorFromStatus } from './errors';
import type { Method, Methods } from './protos';
import type { ListDeploymentsResponse, WatchEndpointResponse } from './messages';

/** Unary control calls are small: anything slower than this is a fault. */
const RPC_TIMEOUT_MS = 60_000;

/**
 * Channel options as the Python client sets them: keepalive pings find a dead or frozen peer
 * (within 15 s) without waiting for TCP to notice; messages up to 8 MiB (chunks are 1 MiB).
 */
export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': 8 << 20,
  'grpc.max_send_message_length': 8 << 20,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.enable_retries': 0,
};

/** Where the TLS files are; all unset for plaintext. */
export interface TlsOptions {
  /** The CA certificate (PEM) that signed the control service's and the workers' certificates. */
  caFile?: string;
  /** A client certificate (PEM), for a control service that requires one (mutual TLS). */
  certFile?: string;
  /** The private key (PEM) of `certFile`. */
  keyFile?: string;
}

/**
 * Channel credentials from TLS files: TLS when any is given, plaintext otherwise.
 *
 * @throws ControlUnavailableError when a file cannot be read or only one of cert/key is given.
 */
export function channelCredentials(address: string, tls: TlsOptions): grpc.ChannelCredentials {
  const { caFile, certFile, keyFile } = tls;
  if (!caFile && !certFile && !keyFile) {
    return grpc.credentials.createInsecure();
  }
  if (Boolean(certFile) !== Boolean(keyFile)) {
    throw new ControlUnavailableError('certFile and keyFile go together: give both for mutual TLS, or neither');
  }
  const read = (file: string | undefined): Buffer | null => {
    if (!file) {
      return null;
    }
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new ControlUnavailableError(
        `cannot read a TLS file for the control service at ${address}: ${(err as Error).message}`,
      );
    }
  };
  // Without caFile the system's root CAs are trusted.
  return grpc.credentials.createSsl(read(caFile), read(keyFile), read(certFile));
}

/** The control service as this client uses it: list, watch, wake. */
export class ControlConnection {
  readonly client: grpc.Client;
  private readonly metadata: grpc.Metadata;

  constructor(
    readonly address: string,
    apiKey: string,
    readonly credentials: grpc.ChannelCredentials,
    readonly methods: Methods,
  ) {
    this.client = new grpc.Client(address, credentials, CHANNEL_OPTIONS);
    this.metadata = new grpc.Metadata();
    this.metadata.set('authorization', `Bearer ${apiKey}`);
  }

  private get target(): string {
    return `the control service at ${this.address}`;
  }

  private unary<Req, Res>(m: Method<Req, Res>, request: Req): Promise<Res> {
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest<Req, Res>(
        m.path,
        m.requestSerialize,
        m.responseDeserialize,
        request,
        this.metadata,
        { deadline: Date.now() + RPC_TIMEOUT_MS },
        (err, response) => {
          if (err) {
            reject(errorFromStatus(err, this.target));
          } else {
            resolve(response as Res);
          }
        },
      );
    });
  }

  /** The deployments named `name` with their endpoints and workers. */
  listDeployments(name: string): Promise<ListDeploymentsResponse> {
    return this.unary(this.methods.listDeployments, { name });
  }

  /** Ask for workers on an endpoint with none ready; resolves to how many were started. */
  async wake(endpointId: string): Promise<number> {
    const response = await this.unary(this.methods.wakeEndpoint, { endpoint_id: endpointId });
    return response.workers_started;
  }

  /** The endpoint's state now and after every change, until cancelled. */
  watch(endpointId: string): grpc.ClientReadableStream<WatchEndpointResponse> {
    const m = this.methods.watchEndpoint;
    return this.client.makeServerStreamRequest(
      m.path,
      m.requestSerialize,
      m.responseDeserialize,
      { endpoint_id: endpointId },
      this.metadata,
    );
  }

  /** Status of a failed call, as an error that names the control service. */
  error(status: grpc.StatusObject): Error {
    return errorFromStatus(status, this.target);
  }

  close(): void {
    this.client.close();
  }
}
