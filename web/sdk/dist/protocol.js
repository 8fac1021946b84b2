// Protocol v1 frames (docs/protocol.md) as discriminated unions on `type`.
/** Most bytes of a call's `meta`, serialized as JSON. */
export const MAX_META_BYTES = 4096;
