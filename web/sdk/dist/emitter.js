// A typed event emitter: `E` maps each event name to its listener's signature, so
// `call.on("remotemedia", (s) => …)` knows `s` is a MediaState.
export class Emitter {
    constructor() {
        this.listeners = new Map();
    }
    on(event, fn) {
        let set = this.listeners.get(event);
        if (!set)
            this.listeners.set(event, (set = new Set()));
        set.add(fn);
        return this;
    }
    off(event, fn) {
        this.listeners.get(event)?.delete(fn);
        return this;
    }
    emit(event, ...args) {
        for (const fn of [...(this.listeners.get(event) ?? [])]) {
            try {
                fn(...args);
            }
            catch (e) {
                console.error(`firstcall: "${String(event)}" listener threw`, e);
            }
        }
    }
}
