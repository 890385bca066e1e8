/*
 * The bot check's solver, run as a Web Worker so the page never stalls:
 * find the number n (0..maxnumber) for which SHA-256(salt + n) is the
 * challenge. Plain synchronous SHA-256 here rather than crypto.subtle: it
 * needs no secure context and no promise per attempt, which would cost more
 * than the hash itself.
 *
 * In:  {challenge, salt, maxnumber}   Out: {number, took} or {number: null}
 */

const K = new Int32Array(64);
const INIT = new Int32Array(8);

// The first 32 bits of the fractional parts of the square roots (INIT) and
// cube roots (K) of the first primes, as FIPS 180-4 defines them.
(() => {
  const primes = [];
  for (let n = 2; primes.length < 64; n += 1) {
    if (primes.every((p) => n % p !== 0)) primes.push(n);
  }
  const frac = (x) => ((x - Math.floor(x)) * 0x100000000) | 0;
  primes.forEach((p, i) => {
    K[i] = frac(Math.cbrt(p));
    if (i < 8) INIT[i] = frac(Math.sqrt(p));
  });
})();

const W = new Int32Array(64);
const H = new Int32Array(8);

/** Hash the first `length` bytes of `buffer` (which has room to pad) into H. */
function sha256(buffer, length) {
  const padded = ((length + 9 + 63) >> 6) << 6;
  buffer[length] = 0x80;
  buffer.fill(0, length + 1, padded);
  const bits = length * 8;
  buffer[padded - 4] = bits >>> 24;
  buffer[padded - 3] = (bits >>> 16) & 0xff;
  buffer[padded - 2] = (bits >>> 8) & 0xff;
  buffer[padded - 1] = bits & 0xff;
  let h0 = INIT[0]; let h1 = INIT[1]; let h2 = INIT[2]; let h3 = INIT[3];
  let h4 = INIT[4]; let h5 = INIT[5]; let h6 = INIT[6]; let h7 = INIT[7];
  for (let offset = 0; offset < padded; offset += 64) {
    for (let i = 0; i < 16; i += 1) {
      const j = offset + i * 4;
      W[i] = (buffer[j] << 24) | (buffer[j + 1] << 16) | (buffer[j + 2] << 8) | buffer[j + 3];
    }
    for (let i = 16; i < 64; i += 1) {
      const w15 = W[i - 15];
      const w2 = W[i - 2];
      const s0 = ((w15 >>> 7) | (w15 << 25)) ^ ((w15 >>> 18) | (w15 << 14)) ^ (w15 >>> 3);
      const s1 = ((w2 >>> 17) | (w2 << 15)) ^ ((w2 >>> 19) | (w2 << 13)) ^ (w2 >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
    }
    let a = h0; let b = h1; let c = h2; let d = h3;
    let e = h4; let f = h5; let g = h6; let h = h7;
    for (let i = 0; i < 64; i += 1) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0;
      d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0; h1 = (h1 + b) | 0; h2 = (h2 + c) | 0; h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0; h5 = (h5 + f) | 0; h6 = (h6 + g) | 0; h7 = (h7 + h) | 0;
  }
  H[0] = h0; H[1] = h1; H[2] = h2; H[3] = h3;
  H[4] = h4; H[5] = h5; H[6] = h6; H[7] = h7;
}

/** Return the n whose SHA-256(salt + n) is `challenge`, or null. */
function solve(challenge, salt, maxnumber) {
  const target = new Int32Array(8);
  for (let i = 0; i < 8; i += 1) target[i] = Number.parseInt(challenge.slice(i * 8, i * 8 + 8), 16) | 0;
  const prefix = new TextEncoder().encode(salt);
  const buffer = new Uint8Array(prefix.length + 24 + 72);
  buffer.set(prefix);
  for (let n = 0; n <= maxnumber; n += 1) {
    const digits = String(n);
    let length = prefix.length;
    for (let i = 0; i < digits.length; i += 1) buffer[length++] = digits.charCodeAt(i);
    sha256(buffer, length);
    if (H[0] === target[0] && H[1] === target[1] && H[2] === target[2] && H[3] === target[3]
      && H[4] === target[4] && H[5] === target[5] && H[6] === target[6] && H[7] === target[7]) {
      return n;
    }
  }
  return null;
}

self.onmessage = (event) => {
  const { challenge, salt, maxnumber } = event.data;
  const started = performance.now();
  const number = solve(String(challenge), String(salt), Number(maxnumber));
  self.postMessage({ number, took: performance.now() - started });
};
