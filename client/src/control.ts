/**
 * One channel to the control service, presenting the API key on every call.
 */

import * as fs from 'node:fs';
import * as net from 'node:net';
import * as nodeTls from 'node:tls';
import * as grpc from '@grpc/grpc-js';

import { ControlUnavailableError, VastrpcError, errorFromStatus } from './errors';
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
  // Without caFile the system's root CAs are trusted. The certificate is checked against the
  // address dialled, which channelOptions carries in the TLS server name for IP addresses.
  return grpc.credentials.createSsl(read(caFile), read(keyFile), read(certFile), {
    checkServerIdentity: (host, cert) => nodeTls.checkServerIdentity(ipFromServerName(host) ?? host, cert),
  });
}

// TLS forbids an IP address as the server name (RFC 6066; Node warns with DEP0123 on every
// connection), and grpc-js sends the dialled host as one. For an IP, the name sent instead
// encodes it (servers here ignore the name); the certificate is still checked against the IP.
const IP_NAME_SUFFIX = '.ip.vastrpc.invalid';

function serverNameForIp(host: string): string | undefined {
  const bare = host.replace(/^\[|\]$/g, '');
  if (net.isIPv4(bare)) {
    return `v4-${bare.replaceAll('.', '-')}${IP_NAME_SUFFIX}`;
  }
  if (net.isIPv6(bare)) {
    return `v6-${bare.replaceAll(':', '-')}${IP_NAME_SUFFIX}`;
  }
  return undefined;
}

function ipFromServerName(name: string): string | undefined {
  if (!name.endsWith(IP_NAME_SUFFIX)) {
    return undefined;
  }
  const encoded = name.slice(0, -IP_NAME_SUFFIX.length);
  if (encoded.startsWith('v4-')) {
    return encoded.slice(3).replaceAll('-', '.');
  }
  if (encoded.startsWith('v6-')) {
    return encoded.slice(3).replaceAll('-', ':');
  }
  return undefined;
}

/** CHANNEL_OPTIONS for a channel to `address` (`host:port`): an IP host travels encoded as the TLS server name. */
export function channelOptions(address: string): grpc.ChannelOptions {
  const host = address.slice(0, address.lastIndexOf(':'));
  const name = serverNameForIp(host);
  return name === undefined ? CHANNEL_OPTIONS : { ...CHANNEL_OPTIONS, 'grpc.ssl_target_name_override': name };
}

/**
 * Control service addresses from `"a:1,b:2"`, `["a:1", "b:2"]` or `"a:1"`, in order, each once.
 *
 * @throws VastrpcError when an entry is not host:port.
 */
export function controlAddresses(value: string | readonly string[]): string[] {
  const parts = (typeof value === 'string' ? [value] : [...value]).flatMap((v) => v.split(','));
  const found: string[] = [];
  for (const part of parts.map((p) => p.trim()).filter((p) => p.length > 0)) {
    const colon = part.lastIndexOf(':');
    const port = Number(part.slice(colon + 1));
    if (colon <= 0 || !/^\d+$/.test(part.slice(colon + 1)) || port < 1 || port > 65535) {
      throw new VastrpcError(
        `controlAddress: '${part}' is not host:port of a control service; write e.g. 127.0.0.1:50051, ` +
          'or several separated by commas (10.0.0.10:50051,10.0.0.11:50051)',
      );
    }
    if (!found.includes(part)) {
      found.push(part);
    }
  }
  return found;
}

/**
 * The control service as this client uses it: list, watch, wake.
 *
 * With several addresses (control services sharing one PostgreSQL store) one is used at a time: a call
 * it leaves unanswered (UNAVAILABLE) goes to the next, and the client stays there; the endpoint watch
 * follows the same switch.
 */
export class ControlConnection {
  private readonly clients = new Map<string, grpc.Client>();
  private readonly metadata: grpc.Metadata;
  private index = 0;

  constructor(
    readonly addresses: readonly string[],
    apiKey: string,
    readonly credentials: grpc.ChannelCredentials,
    readonly methods: Methods,
  ) {
    this.metadata = new grpc.Metadata();
    this.metadata.set('authorization', `Bearer ${apiKey}`);
  }

  /** The control service in use. */
  get address(): string {
    return this.addresses[this.index]!;
  }

  /** The channel to the control service in use; one per address, kept once made. */
  get client(): grpc.Client {
    let client = this.clients.get(this.address);
    if (client === undefined) {
      client = new grpc.Client(this.address, this.credentials, channelOptions(this.address));
      this.clients.set(this.address, client);
    }
    return client;
  }

  /** Turn to the next control service after `failed`, unless already done; false when there is none. */
  switch(failed: string): boolean {
    if (this.addresses.length < 2) {
      return false;
    }
    if (this.address === failed) {
      this.index = (this.index + 1) % this.addresses.length;
    }
    return true;
  }

  private get target(): string {
    return `the control service at ${this.address}`;
  }

  private async unary<Req, Res>(m: Method<Req, Res>, request: Req): Promise<Res> {
    const deadline = Date.now() + RPC_TIMEOUT_MS;
    const failures: string[] = [];
    for (;;) {
      const address = this.address;
      try {
        return await this.unaryOnce(m, request, deadline);
      } catch (err) {
        const status = err as grpc.StatusObject;
        if (status.code !== grpc.status.UNAVAILABLE) {
          throw errorFromStatus(status, `the control service at ${address}`);
        }
        failures.push(`${address}: ${status.details}`);
        // Every control service reads the one store: the next one answers the same request.
        if (failures.length >= this.addresses.length || Date.now() >= deadline || !this.switch(address)) {
          throw this.unreachable(failures);
        }
      }
    }
  }

  private unaryOnce<Req, Res>(m: Method<Req, Res>, request: Req, deadline: number): Promise<Res> {
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest<Req, Res>(
        m.path,
        m.requestSerialize,
        m.responseDeserialize,
        request,
        this.metadata,
        { deadline },
        (err, response) => (err ? reject(err) : resolve(response as Res)),
      );
    });
  }

  /** The error for control services that did not answer, saying what to do. */
  private unreachable(failures: string[]): ControlUnavailableError {
    const reasons = failures.join('; ');
    if (this.addresses.length === 1) {
      return new ControlUnavailableError(
        `cannot reach the control service at ${this.address} (${reasons}). Check that it runs; if other control ` +
          `services share its store, name them too so that the client fails over: ${this.address},OTHER_HOST:PORT`,
      );
    }
    return new ControlUnavailableError(
      `cannot reach any of the control services ${this.addresses.join(', ')} (${reasons}). ` +
        'Check that at least one of them runs',
    );
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

  /** The endpoint's state now and after every change, until cancelled, from the control service in use. */
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
    for (const client of this.clients.values()) {
      client.close();
    }
    this.clients.clear();
  }
}
