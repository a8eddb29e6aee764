/**
 * The layout of a counter's DATA_DIR: `mesh.json` says which format and how many shards the
 * directory was made for, and each shard the counter holds is one log store in
 * `shards/<shard>/`. The shard count is fixed when a mesh is created (a tenant's shard depends
 * on it), so a counter whose DATA_DIR disagrees with its SHARDS refuses to start.
 *
 * A DATA_DIR of the format before shards (one log store at its top) is migrated by the counter
 * (see migrate.ts); `legacy` tells it one is there.
 */
import { mkdir, readdir, readFile, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SNAPSHOT_NAME, logSeq } from './codec.ts';
import { DIR_MODE, errorCode, replaceFile, syncDir } from './files.ts';

const MESH_FILE = 'mesh.json';
const MESH_TMP = 'mesh.json.tmp';
const SHARDS_DIR = 'shards';
/** The replicated member list (see membership.ts), replaced whole on each change. */
const MEMBERS_FILE = 'members';
const MEMBERS_TMP = 'members.tmp';
/** In a shard's directory: the shard is being caught up from its replicas and is not served yet. */
const CATCHING_UP_FILE = 'catching-up';
/** A shard directory renamed to this suffix is being deleted; a crash leaves it for the next start. */
const DELETING_SUFFIX = '.deleting';
/** The format this code writes; 1 was the single-document DATA_DIR (no mesh.json). */
const FORMAT = 2;

export class DataDirFormatError extends Error {
  override name = 'DataDirFormatError';
}

interface MeshFile {
  format: number;
  shards: number;
}

export class ShardDirs {
  private constructor(
    readonly root: string,
    readonly shards: number,
    /** True when the directory holds a single-document store left by a version before shards. */
    readonly legacy: boolean,
  ) {}

  /**
   * Reads (or, for a new or pre-shard directory, writes) `mesh.json`. Throws DataDirFormatError
   * when the directory was made for another shard count or a later format. Call under the lock.
   */
  static async open(root: string, shards: number): Promise<ShardDirs> {
    const found = await readMeshFile(root);
    if (found) {
      if (found.format !== FORMAT) {
        throw new DataDirFormatError(`DATA_DIR ${root} is in format ${found.format}, which this version does not read (it reads format ${FORMAT}); run the version that wrote it`);
      }
      if (found.shards !== shards) {
        throw new DataDirFormatError(
          `DATA_DIR ${root} was made with SHARDS=${found.shards} but this counter runs with SHARDS=${shards}: ` +
            `a tenant's shard depends on it, so it is fixed when a mesh is created. Start with SHARDS=${found.shards}, or give this counter an empty DATA_DIR`,
        );
      }
    }
    const legacy = await holdsLegacyStore(root);
    // written once the directory is known to be ours: a crash before this line changes nothing
    if (!found) await replaceFile(join(root, MESH_FILE), join(root, MESH_TMP), Buffer.from(`${JSON.stringify({ format: FORMAT, shards })}\n`));
    return new ShardDirs(root, shards, legacy);
  }

  /** The directory of one shard's log store. */
  dir(shard: number): string {
    return join(this.root, SHARDS_DIR, String(shard));
  }

  /** Shards with a directory, in order: those this counter held when it stopped. */
  async held(): Promise<number[]> {
    let names: string[];
    try {
      names = await readdir(join(this.root, SHARDS_DIR));
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return [];
      throw err;
    }
    return names
      .filter((n) => /^\d+$/.test(n) && Number(n) < this.shards)
      .map(Number)
      .sort((a, b) => a - b);
  }

  /**
   * Deletes a shard's directory (its log store is closed; the shard is held elsewhere): renamed
   * first, so a crash midway never leaves a half-deleted shard that looks held.
   */
  async remove(shard: number): Promise<void> {
    const doomed = `${this.dir(shard)}${DELETING_SUFFIX}`;
    await rename(this.dir(shard), doomed);
    await syncDir(join(this.root, SHARDS_DIR));
    await rm(doomed, { recursive: true, force: true });
  }

  /** Finishes deletions a crash cut short. */
  async removeLeftovers(): Promise<void> {
    let names: string[];
    try {
      names = await readdir(join(this.root, SHARDS_DIR));
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return;
      throw err;
    }
    for (const n of names) if (n.endsWith(DELETING_SUFFIX)) await rm(join(this.root, SHARDS_DIR, n), { recursive: true, force: true });
  }

  /** True when the shard was still being caught up when the counter stopped. */
  async catchingUp(shard: number): Promise<boolean> {
    try {
      await readFile(join(this.dir(shard), CATCHING_UP_FILE));
      return true;
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return false;
      throw err;
    }
  }

  /** Marks a shard as catching up (before anything of it is stored) or as caught up. */
  async setCatchingUp(shard: number, on: boolean): Promise<void> {
    const dir = this.dir(shard);
    if (on) {
      await mkdir(dir, { recursive: true, mode: DIR_MODE });
      await syncDir(join(this.root, SHARDS_DIR));
      await writeFile(join(dir, CATCHING_UP_FILE), '');
    } else {
      await unlink(join(dir, CATCHING_UP_FILE)).catch((err: unknown) => {
        if (errorCode(err) !== 'ENOENT') throw err;
      });
    }
    await syncDir(dir);
  }

  /** The member list as saved last, or null. */
  async loadMembers(): Promise<Uint8Array | null> {
    try {
      return new Uint8Array(await readFile(join(this.root, MEMBERS_FILE)));
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return null;
      throw err;
    }
  }

  saveMembers(state: Uint8Array): Promise<void> {
    return replaceFile(join(this.root, MEMBERS_FILE), join(this.root, MEMBERS_TMP), state);
  }

  /** Deletes the pre-shard store's files once every item in them is in the shards. */
  async removeLegacy(): Promise<void> {
    for (const name of await readdir(this.root)) {
      if (name === SNAPSHOT_NAME || logSeq(name) !== null) await rm(join(this.root, name), { force: true });
    }
    await syncDir(this.root);
  }
}

async function readMeshFile(root: string): Promise<MeshFile | null> {
  let text: string;
  try {
    text = await readFile(join(root, MESH_FILE), 'utf8');
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return null;
    throw err;
  }
  const v = (() => {
    try {
      return JSON.parse(text) as Partial<MeshFile>;
    } catch {
      return null;
    }
  })();
  if (!v || !Number.isInteger(v.format) || !Number.isInteger(v.shards)) {
    throw new DataDirFormatError(`DATA_DIR ${root} has a damaged ${MESH_FILE} (${JSON.stringify(text.slice(0, 80))}); restore it, or give this counter an empty DATA_DIR`);
  }
  return v as MeshFile;
}

async function holdsLegacyStore(root: string): Promise<boolean> {
  const names = await readdir(root);
  return names.some((n) => n === SNAPSHOT_NAME || logSeq(n) !== null);
}
