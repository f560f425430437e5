// Hand-written: a binary min-heap is thirty lines, and retries need one keyed by due time.

/** Items ordered by `dueAt`, earliest first; ties in insertion order do not matter. */
export class RetryQueue<T extends { dueAt: number }> {
  readonly #heap: T[] = [];

  get size(): number {
    return this.#heap.length;
  }

  /** The earliest item, without removing it. */
  peek(): T | undefined {
    return this.#heap[0];
  }

  push(item: T): void {
    const heap = this.#heap;
    heap.push(item);
    let index = heap.length - 1;
    while (index > 0) {
      const parent = (index - 1) >> 1;
      const above = heap[parent] as T;
      if (above.dueAt <= item.dueAt) break;
      heap[index] = above;
      index = parent;
    }
    heap[index] = item;
  }

  /** Removes and returns the earliest item. */
  pop(): T | undefined {
    const heap = this.#heap;
    const top = heap[0];
    const last = heap.pop();
    if (heap.length === 0 || last === undefined) return top;
    let index = 0;
    for (;;) {
      const left = 2 * index + 1;
      if (left >= heap.length) break;
      const right = left + 1;
      const child =
        right < heap.length && (heap[right] as T).dueAt < (heap[left] as T).dueAt ? right : left;
      if ((heap[child] as T).dueAt >= last.dueAt) break;
      heap[index] = heap[child] as T;
      index = child;
    }
    heap[index] = last;
    return top;
  }
}
