/**
 * The client's entry point: connects to the control service and opens endpoints to call.
 */

import { ControlConnection, channelCredentials, controlAddresses } from './control';
import type { TlsOptions } from './control';
import { Endpoint } from './endpoint';
import { NotFoundError, VastrpcError } from './errors';
import { DEFAULT_PROTOS_DIR, loadMethods } from './protos';

/** How to reach the control service. */
export interface ClientOptions extends TlsOptions {
  /**
   * `host:port` of the control service (`vastrpc control serve`), or several (comma-separated, or an array)
   * sharing one PostgreSQL store: the first is used, and the client turns to the next when it stops
   * answering, meanwhile calling the workers it knows.
   */
  controlAddress: string | readonly string[];
  /** Its API key (HOME/api_key of the control service). */
  apiKey: string;
  /** The folder holding vastrpc/api/v1/*.proto; the repository's protos/ by default. */
  protosDir?: string;
  /** Seconds a call waits for a ready worker before it fails (NoReadyWorkerError); 60 by default. */
  readyTimeout?: number;
}

/**
 * A client of one control service.
 *
 * TLS is on when `caFile` (the CA of the control service and its workers) is given, mutual TLS
 * when `certFile` and `keyFile` are too; workers are reached with the same credentials.
 *
 * @example
 * const client = new VastrpcClient({ controlAddress: '127.0.0.1:50051', apiKey });
 * const endpoint = await client.endpoint('hello');
 * console.log(await endpoint.call<number>('square', [5]));
 * client.close();
 */
export class VastrpcClient {
  private readonly control: ControlConnection;
  private readonly endpoints = new Set<Endpoint>();
  private readonly readyTimeout: number;

  /**
   * @throws VastrpcError when an option is missing, the .proto files cannot be found, or a TLS file cannot be read.
   */
  constructor(options: ClientOptions) {
    const addresses = controlAddresses(options.controlAddress ?? '');
    if (addresses.length === 0) {
      throw new VastrpcError('controlAddress is required: the host:port of the control service');
    }
    if (!options.apiKey) {
      throw new VastrpcError("apiKey is required: the control service's API key (its HOME/api_key)");
    }
    this.readyTimeout = options.readyTimeout ?? 60;
    const methods = loadMethods(options.protosDir ?? DEFAULT_PROTOS_DIR);
    const credentials = channelCredentials(addresses.join(','), options);
    this.control = new ControlConnection(addresses, options.apiKey, credentials, methods);
  }

  /**
   * Open the endpoint of a deployment and follow its ready workers.
   *
   * @param deploymentName The deployment's name (`Deployment(name=...)`, by default its file's name).
   * @param tag Its tag; "default" unless the deployment set another.
   * @throws NotFoundError when the control service has no such deployment or tag.
   */
  async endpoint(deploymentName: string, tag = 'default'): Promise<Endpoint> {
    const listing = await this.control.listDeployments(deploymentName);
    const deployment = listing.deployments.find((d) => d.name === deploymentName);
    const found = deployment?.endpoints.find((e) => e.tag === tag);
    if (deployment === undefined || found === undefined) {
      const tags = deployment?.endpoints.map((e) => e.tag).join(', ');
      throw new NotFoundError(
        deployment === undefined
          ? `no deployment named ${deploymentName} on the control service at ${this.control.address}; ` +
              'deploy it first (await app.ensure_ready() in Python)'
          : `deployment ${deploymentName} has no endpoint tagged ${tag} (tags: ${tags || 'none'})`,
      );
    }
    const endpoint = new Endpoint(this.control, deploymentName, tag, found.endpoint_id, this.readyTimeout);
    this.endpoints.add(endpoint);
    try {
      await endpoint.start();
    } catch (err) {
      endpoint.close();
      this.endpoints.delete(endpoint);
      throw err;
    }
    return endpoint;
  }

  /** Close every endpoint and the channel to the control service. */
  close(): void {
    for (const endpoint of this.endpoints) {
      endpoint.close();
    }
    this.endpoints.clear();
    this.control.close();
  }
}
