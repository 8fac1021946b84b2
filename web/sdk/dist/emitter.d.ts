/** Event name to listener signature. */
export type EventMap<E> = {
    [K in keyof E]: (...args: any[]) => void;
};
export declare class Emitter<E extends EventMap<E>> {
    private listeners;
    on<K extends keyof E>(event: K, fn: E[K]): this;
    off<K extends keyof E>(event: K, fn: E[K]): this;
    protected emit<K extends keyof E>(event: K, ...args: Parameters<E[K]>): void;
}
