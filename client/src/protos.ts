/**
 * Loads vastrpc's .proto files at run time with @grpc/proto-loader and hands out typed method descriptors.
 */

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { MethodDefinition, ServiceDefinition } from '@grpc/proto-loader';
import * as protoLoader from '@grpc/proto-loader';

import { VastrpcError } from './errors';
import type {
  InvokeRequest,
  InvokeResponse,
  ListDeploymentsRequest,
  ListDeploymentsResponse,
  WakeEndpointRequest,
  WakeEndpointResponse,
  WatchEndpointRequest,
  WatchEndpointResponse,
} from './messages';

/** The repository's protos/ folder, seen from client/dist/. */
export const DEFAULT_PROTOS_DIR = path.resolve(__dirname, '..', '..', 'protos');

const FILES = ['vastrpc/api/v1/control.proto', 'vastrpc/api/v1/worker.proto'];

/** A method with its wire path and (de)serializers, typed with the hand-written messages. */
export type Method<Req, Res> = MethodDefinition<Req, Res>;

/** The RPCs this client makes. */
export interface Methods {
  listDeployments: Method<ListDeploymentsRequest, ListDeploymentsResponse>;
  watchEndpoint: Method<WatchEndpointRequest, WatchEndpointResponse>;
  wakeEndpoint: Method<WakeEndpointRequest, WakeEndpointResponse>;
  invoke: Method<InvokeRequest, InvokeResponse>;
}

/**
 * Parse the .proto files under `protosDir` into the methods this client uses.
 *
 * @throws VastrpcError when a file is missing or does not define them.
 */
export function loadMethods(protosDir: string = DEFAULT_PROTOS_DIR): Methods {
  for (const file of FILES) {
    if (!fs.existsSync(path.join(protosDir, file))) {
      throw new VastrpcError(
        `cannot find ${file} under ${protosDir}: pass protosDir (the repository's protos/ folder) to VastrpcClient`,
      );
    }
  }
  const definition = protoLoader.loadSync(FILES, {
    includeDirs: [protosDir],
    // Field names as in the .proto, so the interfaces in messages.ts match them.
    keepCase: true,
    enums: String,
    // Call ids and counters stay far below 2^53.
    longs: Number,
    defaults: true,
    oneofs: true,
  });
  const service = (name: string): ServiceDefinition => {
    const found = definition[`vastrpc.api.v1.${name}`];
    if (found === undefined || 'format' in found) {
      throw new VastrpcError(`the .proto files under ${protosDir} define no service vastrpc.api.v1.${name}`);
    }
    return found as ServiceDefinition;
  };
  const control = service('ControlService');
  const worker = service('WorkerService');
  const method = <Req, Res>(svc: ServiceDefinition, name: string): Method<Req, Res> => {
    const found = svc[name];
    if (found === undefined) {
      throw new VastrpcError(`the .proto files under ${protosDir} lack the RPC ${name}`);
    }
    return found as unknown as Method<Req, Res>;
  };
  return {
    listDeployments: method(control, 'ListDeployments'),
    watchEndpoint: method(control, 'WatchEndpoint'),
    wakeEndpoint: method(control, 'WakeEndpoint'),
    invoke: method(worker, 'Invoke'),
  };
}
