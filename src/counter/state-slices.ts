/**
 * A shard's whole state for its snapshot, encoded a slice at a time between turns of the event
 * loop: encoding a shard in one go held the counter's requests for 10-80 ms per shard (1-5 MB of
 * state), and shards compact one after another. The bytes are those of `Y.encodeStateAsUpdate`
 * (update format v1), cut into parts.
 *
 * Consistency: the state is taken as it is when the call starts. What Yjs changes in place
 * afterwards is the last struct of a client (appends merge into it) and the ends of the clients'
 * struct arrays, so the last struct of each client and the delete set are encoded at once, and the
 * structs before them (which nothing else changes in a grow-only set) slice by slice. Should any of
 * those structs move meanwhile (a split or merge, which only deletions or inserts in the middle of a
 * text cause), the state is encoded again in one go.
 */
import * as Y from 'yjs';

/** Clock units (characters, for strings) of structs encoded between two turns of the event loop. */
export const SLICE_UNITS = 128 * 1024;

/** The state as parts whose concatenation is one Yjs update; `sliced` false when it was encoded in one go. */
export interface EncodedState {
  parts: Uint8Array[];
  bytes: number;
  sliced: boolean;
}

type Struct = Y.Item | Y.GC | Y.Skip;

interface ClientPlan {
  client: number;
  structs: Struct[];
  /** The structs before the last, as they were at the start. */
  prefix: Struct[];
  last: Struct;
  lastBytes: Uint8Array;
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export async function encodeStateInSlices(doc: Y.Doc, sliceUnits = SLICE_UNITS, turn: () => Promise<void> = nextTurn): Promise<EncodedState> {
  const whole = (): EncodedState => {
    const state = Y.encodeStateAsUpdate(doc);
    return { parts: [state], bytes: state.length, sliced: false };
  };
  const store = doc.store;
  // pending structs are merged into the encoding by Yjs itself: rare (a peer's update waiting for another)
  if (store.pendingStructs !== null || store.pendingDs !== null) return whole();
  // the delete set alone: the state encoded against the document's own state vector has no structs
  const noStructs = Y.encodeStateAsUpdate(doc, Y.encodeStateVector(doc));
  if (noStructs[0] !== 0) return whole();
  const deleteSet = noStructs.subarray(1);

  const plans: ClientPlan[] = [];
  for (const [client, structs] of [...store.clients.entries()].sort((a, b) => b[0] - a[0])) {
    const last = structs.at(-1);
    if (last === undefined) continue;
    const enc = new Y.UpdateEncoderV1();
    last.write(enc, 0);
    plans.push({ client, structs, prefix: structs.slice(0, -1), last, lastBytes: enc.toUint8Array() });
  }

  const parts: Uint8Array[] = [varUints([plans.length])];
  let units = 0;
  for (const p of plans) {
    parts.push(varUints([p.prefix.length + 1, p.client, (p.prefix[0] ?? p.last).id.clock]));
    let enc = new Y.UpdateEncoderV1();
    for (const s of p.prefix) {
      s.write(enc, 0);
      units += s.length;
      if (units >= sliceUnits) {
        parts.push(enc.toUint8Array());
        enc = new Y.UpdateEncoderV1();
        units = 0;
        await turn();
      }
    }
    parts.push(enc.toUint8Array(), p.lastBytes);
  }
  parts.push(deleteSet);

  for (const p of plans) {
    const now = store.clients.get(p.client);
    if (now !== p.structs || now[p.prefix.length] !== p.last || p.prefix.some((s, i) => now[i] !== s)) return whole();
  }
  return { parts, bytes: parts.reduce((n, part) => n + part.length, 0), sliced: true };
}

/** Unsigned LEB128, as lib0 writes Yjs's var uints. */
function varUints(values: number[]): Uint8Array {
  const out: number[] = [];
  for (let v of values) {
    while (v > 0x7f) {
      out.push(0x80 | (v & 0x7f));
      v = Math.floor(v / 128);
    }
    out.push(v);
  }
  return Uint8Array.from(out);
}
