/**
 * Turns for compactions, shared by the log stores of one counter: at most `limit` compactions
 * run at once, the others wait in the order they asked. Many shards reach their threshold in the
 * same second (they take the same writes), and run side by side their snapshot writes and fsyncs
 * filled the disk queue and Node's four libuv threads ahead of the write path's group-commit fsync.
 */

/** One place in the queue: wait for `granted`, run if it says true, then `release()`. */
export interface CompactionTurn {
  /** Resolves with true once this turn may run, with false if it was withdrawn (or released) before. */
  readonly granted: Promise<boolean>;
  /** Ends the turn: frees its slot if it ran, or gives up its place if it still waited. Idempotent. */
  release(): void;
  /** Gives up the place if the turn still waits; does nothing to a turn that runs. */
  withdraw(): void;
}

export class CompactionQueue {
  private running = 0;
  private readonly waiting: { grant: (run: boolean) => void }[] = [];

  constructor(readonly limit = 1) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`a compaction queue needs a limit of at least 1, got ${limit}`);
  }

  /** Compactions running now. */
  get active(): number {
    return this.running;
  }

  /** Compactions waiting for a turn. */
  get queued(): number {
    return this.waiting.length;
  }

  /** A place in the queue; granted at once when fewer than `limit` run. */
  turn(): CompactionTurn {
    let state: 'waiting' | 'running' | 'done' = 'waiting';
    let grant!: (run: boolean) => void;
    const granted = new Promise<boolean>((resolve) => {
      grant = resolve;
    });
    const entry = {
      grant: (run: boolean) => {
        if (run) {
          state = 'running';
          this.running++;
        } else {
          state = 'done';
        }
        grant(run);
      },
    };
    if (this.running < this.limit) entry.grant(true);
    else this.waiting.push(entry);
    const withdraw = () => {
      if (state !== 'waiting') return;
      const at = this.waiting.indexOf(entry);
      if (at >= 0) this.waiting.splice(at, 1);
      entry.grant(false);
    };
    return {
      granted,
      withdraw,
      release: () => {
        if (state !== 'running') return withdraw();
        state = 'done';
        this.running--;
        this.next();
      },
    };
  }

  private next(): void {
    while (this.running < this.limit) {
      const entry = this.waiting.shift();
      if (entry === undefined) return;
      entry.grant(true);
    }
  }
}
