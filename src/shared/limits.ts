/**
 * Bounds that both configuration and the wire protocol enforce. They live here, below both, so
 * `shared` depends on nothing and the protocol and config agree on one number.
 */

/** The bound on a node id, an address and a Count's tenant, in characters. */
export const MAX_WIRE_FIELD_CHARS = 1024;
