// Protocol v1 frames (docs/protocol.md) as discriminated unions on `type`.
export {};
