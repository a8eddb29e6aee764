import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * True when `header` is `Bearer <secret>`. Both sides are hashed first so the comparison takes
 * the same time whatever the lengths, and timingSafeEqual never sees unequal sizes.
 */
export function bearerMatches(header: string | undefined, secret: string): boolean {
  const given = createHash('sha256').update(header ?? '').digest();
  const wanted = createHash('sha256').update(`Bearer ${secret}`).digest();
  return timingSafeEqual(given, wanted);
}

/** True when `header` carries any of `secrets` (current and, while rotating, previous); every one is compared, so timing says nothing of which. */
export function bearerMatchesAny(header: string | undefined, secrets: readonly string[]): boolean {
  let ok = false;
  for (const s of secrets) ok = bearerMatches(header, s) || ok;
  return ok;
}
