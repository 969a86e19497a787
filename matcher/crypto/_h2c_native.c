/* The Elligator 2 half of RFC 9380 hashing to curve25519, in C: the same arithmetic as
 * matcher/crypto/_h2c.py's field_pairs_to_u, for the hot loop of hashing a list.
 *
 * Why C: in Python, each field operation is a gmpy2 call with an object allocation, and the map
 * is ~38 us per message, six times what the SHA-512 expansion costs. Here a field element is
 * five 51-bit limbs (the representation of curve25519-donna / ref10's 64-bit code) and the two
 * exponentiations are the usual addition chains, so the map costs a few microseconds.
 *
 * Speed, not constant time, as in the Python module: identifiers are hashed in bulk by their
 * owner, and the branch on squareness reveals nothing the owner does not know. The GIL is
 * released while the batch is mapped.
 *
 * Input: 96 bytes a message, its two field elements u0, u1 as RFC 9380 hash_to_field leaves
 * them before reduction (48-byte big-endian strings). Output: the 32-byte little-endian u of
 * 8 * (map(u0) + map(u1)), and the indices of messages whose result is the identity.
 * The Python fallback is the specification; tests compare the two on random and chosen input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;
typedef struct { uint64_t v[5]; } fe;

#define M51 ((UINT64_C(1) << 51) - 1)

static const fe FE_ONE = {{0x1ULL, 0x0ULL, 0x0ULL, 0x0ULL, 0x0ULL}};
static const fe FE_A = {{0x76d06ULL, 0x0ULL, 0x0ULL, 0x0ULL, 0x0ULL}};
static const fe FE_MINUS_A = {{0x7fffffff892e7ULL, 0x7ffffffffffffULL, 0x7ffffffffffffULL, 0x7ffffffffffffULL, 0x7ffffffffffffULL}};
static const fe FE_A_SQUARED = {{0x3724c21c24ULL, 0x0ULL, 0x0ULL, 0x0ULL, 0x0ULL}};
static const fe FE_A24 = {{0x1db42ULL, 0x0ULL, 0x0ULL, 0x0ULL, 0x0ULL}};
static const fe FE_SQRT_M1 = {{0x61b274a0ea0b0ULL, 0xd5a5fc8f189dULL, 0x7ef5e9cbd0c60ULL, 0x78595a6804c9eULL, 0x2b8324804fc1dULL}};
static const fe FE_A_I = {{0x763da5bc2aa81ULL, 0x69656852617a6ULL, 0x12e1f8153f090ULL, 0x566e89ffa6f4aULL, 0x5b1fab4483d12ULL}};
static const fe FE_MINUS_A_I = {{0x9c25a43d556cULL, 0x169a97ad9e859ULL, 0x6d1e07eac0f6fULL, 0x29917600590b5ULL, 0x24e054bb7c2edULL}};
static const fe FE_K_I = {{0x1e4d8b5f15f3eULL, 0x72a5a0370e762ULL, 0x10a16342f39fULL, 0x7a6a597fb361ULL, 0x547cdb7fb03e2ULL}};
static const fe FE_K_MINUS_I = {{0x1e4d8b5f15f3cULL, 0x72a5a0370e762ULL, 0x10a16342f39fULL, 0x7a6a597fb361ULL, 0x547cdb7fb03e2ULL}};

/* Limbs below 2^63 in, every limb below 2^51 + 2^13 out. */
static inline void fe_carry(fe *r) {
    uint64_t c;
    c = r->v[0] >> 51; r->v[0] &= M51; r->v[1] += c;
    c = r->v[1] >> 51; r->v[1] &= M51; r->v[2] += c;
    c = r->v[2] >> 51; r->v[2] &= M51; r->v[3] += c;
    c = r->v[3] >> 51; r->v[3] &= M51; r->v[4] += c;
    c = r->v[4] >> 51; r->v[4] &= M51; r->v[0] += 19 * c;
}

static inline void fe_add(fe *r, const fe *a, const fe *b) {
    for (int i = 0; i < 5; i++) r->v[i] = a->v[i] + b->v[i];
    fe_carry(r);
}

/* a - b + 4p: stays positive for limbs of b below 2^53. */
static inline void fe_sub(fe *r, const fe *a, const fe *b) {
    r->v[0] = a->v[0] + UINT64_C(0x1fffffffffffb4) - b->v[0];
    for (int i = 1; i < 5; i++) r->v[i] = a->v[i] + UINT64_C(0x1ffffffffffffc) - b->v[i];
    fe_carry(r);
}

/* The five 128-bit column sums of a product, carried into limbs below 2^52 (2^255 = 19 mod p). */
static inline void fe_reduce_wide(fe *r, u128 t0, u128 t1, u128 t2, u128 t3, u128 t4) {
    uint64_t r0, r1, r2, r3, r4, c;
    r0 = (uint64_t)t0 & M51; t1 += (uint64_t)(t0 >> 51);
    r1 = (uint64_t)t1 & M51; t2 += (uint64_t)(t1 >> 51);
    r2 = (uint64_t)t2 & M51; t3 += (uint64_t)(t2 >> 51);
    r3 = (uint64_t)t3 & M51; t4 += (uint64_t)(t3 >> 51);
    r4 = (uint64_t)t4 & M51; c = (uint64_t)(t4 >> 51);
    r0 += 19 * c;
    r1 += r0 >> 51; r0 &= M51;
    r->v[0] = r0; r->v[1] = r1; r->v[2] = r2; r->v[3] = r3; r->v[4] = r4;
}

/* Inputs with limbs below 2^54; output limbs below 2^52. */
static inline void fe_mul(fe *r, const fe *a, const fe *b) {
    const uint64_t a0 = a->v[0], a1 = a->v[1], a2 = a->v[2], a3 = a->v[3], a4 = a->v[4];
    const uint64_t b0 = b->v[0], b1 = b->v[1], b2 = b->v[2], b3 = b->v[3], b4 = b->v[4];
    const uint64_t b1_19 = 19 * b1, b2_19 = 19 * b2, b3_19 = 19 * b3, b4_19 = 19 * b4;
    u128 t0 = (u128)a0 * b0 + (u128)a1 * b4_19 + (u128)a2 * b3_19 + (u128)a3 * b2_19 + (u128)a4 * b1_19;
    u128 t1 = (u128)a0 * b1 + (u128)a1 * b0 + (u128)a2 * b4_19 + (u128)a3 * b3_19 + (u128)a4 * b2_19;
    u128 t2 = (u128)a0 * b2 + (u128)a1 * b1 + (u128)a2 * b0 + (u128)a3 * b4_19 + (u128)a4 * b3_19;
    u128 t3 = (u128)a0 * b3 + (u128)a1 * b2 + (u128)a2 * b1 + (u128)a3 * b0 + (u128)a4 * b4_19;
    u128 t4 = (u128)a0 * b4 + (u128)a1 * b3 + (u128)a2 * b2 + (u128)a3 * b1 + (u128)a4 * b0;
    fe_reduce_wide(r, t0, t1, t2, t3, t4);
}

/* fe_mul(r, a, a) with the symmetric products taken once: 15 multiplications instead of 25. */
static inline void fe_sq(fe *r, const fe *a) {
    const uint64_t a0 = a->v[0], a1 = a->v[1], a2 = a->v[2], a3 = a->v[3], a4 = a->v[4];
    const uint64_t d0 = 2 * a0, d1 = 2 * a1, a2_38 = 38 * a2, a3_19 = 19 * a3, a3_38 = 38 * a3, a4_19 = 19 * a4;
    u128 t0 = (u128)a0 * a0 + (u128)a1 * (38 * a4) + (u128)a2 * a3_38;
    u128 t1 = (u128)d0 * a1 + (u128)a2_38 * a4 + (u128)a3_19 * a3;
    u128 t2 = (u128)d0 * a2 + (u128)a1 * a1 + (u128)a3_38 * a4;
    u128 t3 = (u128)d0 * a3 + (u128)d1 * a2 + (u128)a4_19 * a4;
    u128 t4 = (u128)d0 * a4 + (u128)d1 * a3 + (u128)a2 * a2;
    fe_reduce_wide(r, t0, t1, t2, t3, t4);
}

static inline void fe_sq_times(fe *r, const fe *a, int times) {
    fe_sq(r, a);
    while (--times) fe_sq(r, r);
}

/* Fully reduced little-endian limbs (each below 2^51, value below p). */
static void fe_canonical(uint64_t out[5], const fe *a) {
    fe t = *a;
    fe_carry(&t);
    fe_carry(&t);
    uint64_t q = (t.v[0] + 19) >> 51;
    q = (t.v[1] + q) >> 51;
    q = (t.v[2] + q) >> 51;
    q = (t.v[3] + q) >> 51;
    q = (t.v[4] + q) >> 51;
    t.v[0] += 19 * q;
    uint64_t c;
    c = t.v[0] >> 51; t.v[0] &= M51; t.v[1] += c;
    c = t.v[1] >> 51; t.v[1] &= M51; t.v[2] += c;
    c = t.v[2] >> 51; t.v[2] &= M51; t.v[3] += c;
    c = t.v[3] >> 51; t.v[3] &= M51; t.v[4] += c;
    t.v[4] &= M51;
    memcpy(out, t.v, sizeof t.v);
}

static int fe_equal(const fe *a, const fe *b) {
    uint64_t x[5], y[5];
    fe_canonical(x, a);
    fe_canonical(y, b);
    return memcmp(x, y, sizeof x) == 0;
}

static int fe_is_zero(const fe *a) {
    uint64_t x[5];
    fe_canonical(x, a);
    return (x[0] | x[1] | x[2] | x[3] | x[4]) == 0;
}

static int fe_is_odd(const fe *a) {
    uint64_t x[5];
    fe_canonical(x, a);
    return (int)(x[0] & 1);
}

static void fe_neg(fe *r, const fe *a) {
    static const fe zero = {{0, 0, 0, 0, 0}};
    fe_sub(r, &zero, a);
}

static void fe_to_bytes(unsigned char out[32], const fe *a) {
    uint64_t x[5];
    fe_canonical(x, a);
    uint64_t w[4];
    w[0] = x[0] | (x[1] << 51);
    w[1] = (x[1] >> 13) | (x[2] << 38);
    w[2] = (x[2] >> 26) | (x[3] << 25);
    w[3] = (x[3] >> 39) | (x[4] << 12);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++) out[8 * i + j] = (unsigned char)(w[i] >> (8 * j));
}

/* Bits [start, start + len) of a 384-bit little-endian word array, len <= 51. */
static uint64_t bits384(const uint64_t w[6], int start, int len) {
    int i = start >> 6, s = start & 63;
    uint64_t v = w[i] >> s;
    if (s + len > 64 && i + 1 < 6) v |= w[i + 1] << (64 - s);
    return v & ((UINT64_C(1) << len) - 1);
}

/* A 48-byte big-endian string mod p (RFC 9380 OS2IP then mod p): x = hi * 2^255 + lo and
 * 2^255 = 19 mod p. */
static void fe_from_be48(fe *r, const unsigned char *b) {
    uint64_t w[6];
    for (int k = 0; k < 6; k++) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++) v = (v << 8) | b[47 - 8 * k - 7 + j];
        w[k] = v;
    }
    r->v[0] = bits384(w, 0, 51) + 19 * bits384(w, 255, 51);
    r->v[1] = bits384(w, 51, 51) + 19 * bits384(w, 306, 51);
    r->v[2] = bits384(w, 102, 51) + 19 * bits384(w, 357, 27);
    r->v[3] = bits384(w, 153, 51);
    r->v[4] = bits384(w, 204, 51);
    fe_carry(r);
}

/* z^(2^250 - 1) and z^11, the common prefix of the two chains (ref10's). */
static void fe_pow_prefix(fe *z_250_0, fe *z11, const fe *z) {
    fe z2, z9, t, z_5_0, z_10_0, z_20_0, z_50_0, z_100_0;
    fe_sq(&z2, z);
    fe_sq_times(&t, &z2, 2);
    fe_mul(&z9, &t, z);
    fe_mul(z11, &z9, &z2);
    fe_sq(&t, z11);
    fe_mul(&z_5_0, &t, &z9);
    fe_sq_times(&t, &z_5_0, 5);
    fe_mul(&z_10_0, &t, &z_5_0);
    fe_sq_times(&t, &z_10_0, 10);
    fe_mul(&z_20_0, &t, &z_10_0);
    fe_sq_times(&t, &z_20_0, 20);
    fe_mul(&t, &t, &z_20_0);
    fe_sq_times(&t, &t, 10);
    fe_mul(&z_50_0, &t, &z_10_0);
    fe_sq_times(&t, &z_50_0, 50);
    fe_mul(&z_100_0, &t, &z_50_0);
    fe_sq_times(&t, &z_100_0, 100);
    fe_mul(&t, &t, &z_100_0);
    fe_sq_times(&t, &t, 50);
    fe_mul(z_250_0, &t, &z_50_0);
}

/* z^((p - 5) / 8) = z^(2^252 - 3) for two independent z in lockstep (ref10's chain): each squaring
 * depends on the one before, so a single chain leaves the multiplier waiting on latency; two
 * interleaved chains fill those cycles (the map: 133k -> 159k messages per core-second). */
static inline void fe_sq_x2(fe *r0, const fe *a0, fe *r1, const fe *a1) {
    fe_sq(r0, a0);
    fe_sq(r1, a1);
}

static inline void fe_mul_x2(fe *r0, const fe *a0, const fe *b0, fe *r1, const fe *a1, const fe *b1) {
    fe_mul(r0, a0, b0);
    fe_mul(r1, a1, b1);
}

static inline void fe_sq_times_x2(fe *r0, const fe *a0, fe *r1, const fe *a1, int times) {
    fe_sq_x2(r0, a0, r1, a1);
    while (--times) fe_sq_x2(r0, r0, r1, r1);
}

static void fe_pow22523_x2(fe *r0, const fe *z0, fe *r1, const fe *z1) {
    fe z2[2], z9[2], z11[2], t[2], z_5_0[2], z_10_0[2], z_20_0[2], z_50_0[2], z_100_0[2], z_250_0[2];
    fe_sq_x2(&z2[0], z0, &z2[1], z1);
    fe_sq_times_x2(&t[0], &z2[0], &t[1], &z2[1], 2);
    fe_mul_x2(&z9[0], &t[0], z0, &z9[1], &t[1], z1);
    fe_mul_x2(&z11[0], &z9[0], &z2[0], &z11[1], &z9[1], &z2[1]);
    fe_sq_x2(&t[0], &z11[0], &t[1], &z11[1]);
    fe_mul_x2(&z_5_0[0], &t[0], &z9[0], &z_5_0[1], &t[1], &z9[1]);
    fe_sq_times_x2(&t[0], &z_5_0[0], &t[1], &z_5_0[1], 5);
    fe_mul_x2(&z_10_0[0], &t[0], &z_5_0[0], &z_10_0[1], &t[1], &z_5_0[1]);
    fe_sq_times_x2(&t[0], &z_10_0[0], &t[1], &z_10_0[1], 10);
    fe_mul_x2(&z_20_0[0], &t[0], &z_10_0[0], &z_20_0[1], &t[1], &z_10_0[1]);
    fe_sq_times_x2(&t[0], &z_20_0[0], &t[1], &z_20_0[1], 20);
    fe_mul_x2(&t[0], &t[0], &z_20_0[0], &t[1], &t[1], &z_20_0[1]);
    fe_sq_times_x2(&t[0], &t[0], &t[1], &t[1], 10);
    fe_mul_x2(&z_50_0[0], &t[0], &z_10_0[0], &z_50_0[1], &t[1], &z_10_0[1]);
    fe_sq_times_x2(&t[0], &z_50_0[0], &t[1], &z_50_0[1], 50);
    fe_mul_x2(&z_100_0[0], &t[0], &z_50_0[0], &z_100_0[1], &t[1], &z_50_0[1]);
    fe_sq_times_x2(&t[0], &z_100_0[0], &t[1], &z_100_0[1], 100);
    fe_mul_x2(&t[0], &t[0], &z_100_0[0], &t[1], &t[1], &z_100_0[1]);
    fe_sq_times_x2(&t[0], &t[0], &t[1], &t[1], 50);
    fe_mul_x2(&z_250_0[0], &t[0], &z_50_0[0], &z_250_0[1], &t[1], &z_50_0[1]);
    fe_sq_times_x2(&t[0], &z_250_0[0], &t[1], &z_250_0[1], 2);
    fe_mul_x2(r0, &t[0], z0, r1, &t[1], z1);
}

/* z^(p - 2) = z^(2^255 - 21) */
static void fe_invert(fe *r, const fe *z) {
    fe z_250_0, z11, t;
    fe_pow_prefix(&z_250_0, &z11, z);
    fe_sq_times(&t, &z_250_0, 5);
    fe_mul(r, &t, &z11);
}

/* Affine (x, y) of map_to_curve_elligator2_curve25519(u): _h2c._elligator2_affine, in two halves
 * around its one exponentiation t = w^((p-5)/8), so that map_pair can run two of them together. */
typedef struct { fe tv1, gx1, gx1_xd2, w; } ell2_state;

static void elligator2_before(ell2_state *st, const fe *u) {
    fe xd, xd2, tmp;
    fe_sq(&st->tv1, u);
    fe_add(&st->tv1, &st->tv1, &st->tv1);
    fe_add(&xd, &st->tv1, &FE_ONE);
    fe_sq(&xd2, &xd);
    fe_mul(&tmp, &FE_A_SQUARED, &st->tv1);
    fe_sub(&tmp, &xd2, &tmp);
    fe_mul(&st->gx1, &FE_MINUS_A, &tmp);
    fe_mul(&st->gx1_xd2, &st->gx1, &xd2);
    fe_mul(&st->w, &st->gx1_xd2, &xd);
}

static void elligator2_after(fe *x, fe *y, const ell2_state *st, const fe *t, const fe *u) {
    fe t2, chi, chi_over_xd, tmp, minus_one;
    const fe *tv1 = &st->tv1, *gx1 = &st->gx1;
    int on_x1;
    fe_sq(&t2, t);
    fe_mul(&chi, &t2, &st->w);
    fe_mul(&chi_over_xd, &t2, &st->gx1_xd2);
    fe_neg(&minus_one, &FE_ONE);
    if (fe_equal(&chi, &FE_ONE)) {
        fe_mul(x, &FE_MINUS_A, &chi_over_xd);
        fe_mul(y, gx1, t);
        on_x1 = 1;
    } else if (fe_equal(&chi, &minus_one)) {
        fe_mul(x, &FE_A, &chi_over_xd);
        fe_mul(&tmp, gx1, t);
        fe_mul(y, &tmp, &FE_SQRT_M1);
        on_x1 = 1;
    } else if (fe_equal(&chi, &FE_SQRT_M1)) {
        fe_mul(&tmp, &FE_A_I, tv1);
        fe_mul(x, &tmp, &chi_over_xd);
        fe_mul(&tmp, u, gx1);
        fe_mul(&tmp, &tmp, t);
        fe_mul(y, &tmp, &FE_K_I);
        on_x1 = 0;
    } else {
        fe_mul(&tmp, &FE_MINUS_A_I, tv1);
        fe_mul(x, &tmp, &chi_over_xd);
        fe_mul(&tmp, u, gx1);
        fe_mul(&tmp, &tmp, t);
        fe_mul(y, &tmp, &FE_K_MINUS_I);
        on_x1 = 0;
    }
    if (fe_is_odd(y) != on_x1) fe_neg(y, y);
}

/* Both maps of a message, their exponentiations interleaved. */
static void elligator2_affine_x2(fe *x0, fe *y0, const fe *u0, fe *x1, fe *y1, const fe *u1) {
    ell2_state s0, s1;
    fe t0, t1;
    elligator2_before(&s0, u0);
    elligator2_before(&s1, u1);
    fe_pow22523_x2(&t0, &s0.w, &t1, &s1.w);
    elligator2_after(x0, y0, &s0, &t0, u0);
    elligator2_after(x1, y1, &s1, &t1, u1);
}

/* Projective (X:Z) of 8 * (map(u0) + map(u1)); Z = 0 is the identity. */
static void map_pair(fe *x, fe *z, const fe *u0, const fe *u1) {
    fe x0, y0, x1, y1, dx, dy, tmp;
    elligator2_affine_x2(&x0, &y0, u0, &x1, &y1, u1);
    if (!fe_equal(&x0, &x1)) {
        fe_sub(&dx, &x1, &x0);
        fe_sub(&dy, &y1, &y0);
        fe_sq(z, &dx);
        fe_add(&tmp, &FE_A, &x0);
        fe_add(&tmp, &tmp, &x1);
        fe_mul(&tmp, &tmp, z);
        fe_sq(x, &dy);
        fe_sub(x, x, &tmp);
    } else if (fe_equal(&y0, &y1) && !fe_is_zero(&y0)) {
        /* tangent: lambda = (3x^2 + 2Ax + 1) / 2y, x(2P) = (num^2 - (A + 2x) * 4y^2) / 4y^2 */
        fe num, den2, x_sq, t2;
        fe_sq(&x_sq, &x0);
        fe_add(&num, &x_sq, &x_sq);
        fe_add(&num, &num, &x_sq);
        fe_mul(&tmp, &FE_A, &x0);
        fe_add(&num, &num, &tmp);
        fe_add(&num, &num, &tmp);
        fe_add(&num, &num, &FE_ONE);
        fe_sq(&den2, &y0);
        fe_add(&den2, &den2, &den2);
        fe_add(&den2, &den2, &den2);
        fe_add(&t2, &x0, &x0);
        fe_add(&t2, &t2, &FE_A);
        fe_mul(&t2, &t2, &den2);
        fe_sq(x, &num);
        fe_sub(x, x, &t2);
        *z = den2;
    } else {
        *x = FE_ONE;
        memset(z, 0, sizeof *z);
    }
    for (int i = 0; i < 3; i++) {
        fe s, d, t1, t2, t3;
        fe_add(&s, x, z);
        fe_sub(&d, x, z);
        fe_sq(&t1, &s);
        fe_sq(&t2, &d);
        fe_mul(x, &t1, &t2);
        fe_sub(&t3, &t1, &t2);
        fe_mul(&tmp, &FE_A24, &t3);
        fe_add(&tmp, &tmp, &t2);
        fe_mul(z, &t3, &tmp);
    }
}

/* Maps count pairs; writes identity flags. 0 on success, -1 when out of memory. */
static int map_batch(unsigned char *out, char *identity, const unsigned char *uniform, Py_ssize_t count) {
    fe *xs = malloc(sizeof(fe) * (size_t)(count ? count : 1));
    fe *zs = malloc(sizeof(fe) * (size_t)(count ? count : 1));
    fe *prefix = malloc(sizeof(fe) * (size_t)(count ? count : 1));
    if (!xs || !zs || !prefix) {
        free(xs); free(zs); free(prefix);
        return -1;
    }
    fe acc = FE_ONE;
    for (Py_ssize_t j = 0; j < count; j++) {
        fe u0, u1;
        fe_from_be48(&u0, uniform + 96 * j);
        fe_from_be48(&u1, uniform + 96 * j + 48);
        map_pair(&xs[j], &zs[j], &u0, &u1);
        identity[j] = (char)fe_is_zero(&zs[j]);
        if (identity[j]) {   /* keeps the simultaneous inversion valid; encodes as zeros */
            memset(&xs[j], 0, sizeof(fe));
            zs[j] = FE_ONE;
        }
        prefix[j] = acc;
        fe_mul(&acc, &acc, &zs[j]);
    }
    fe inv, tmp;
    fe_invert(&inv, &acc);
    for (Py_ssize_t j = count - 1; j >= 0; j--) {
        fe_mul(&tmp, &inv, &prefix[j]);
        fe_mul(&tmp, &xs[j], &tmp);
        fe_to_bytes(out + 32 * j, &tmp);
        fe_mul(&inv, &inv, &zs[j]);
    }
    free(xs); free(zs); free(prefix);
    return 0;
}

/* A 32-byte little-endian u (top bit ignored; callers pass canonical u below p). */
static void fe_from_le32(fe *r, const unsigned char *b) {
    uint64_t w[4];
    for (int i = 0; i < 4; i++) {
        uint64_t v = 0;
        for (int j = 7; j >= 0; j--) v = (v << 8) | b[8 * i + j];
        w[i] = v;
    }
    r->v[0] = w[0] & M51;
    r->v[1] = ((w[0] >> 51) | (w[1] << 13)) & M51;
    r->v[2] = ((w[1] >> 38) | (w[2] << 26)) & M51;
    r->v[3] = ((w[2] >> 25) | (w[3] << 39)) & M51;
    r->v[4] = (w[3] >> 12) & M51;
}

/* 1/u mod p of each u (0 for u = 0), by Montgomery's simultaneous inversion: group._inverses. */
static int invert_batch(unsigned char *out, const unsigned char *in, Py_ssize_t count) {
    fe *prefix = malloc(sizeof(fe) * (size_t)(count ? count : 1));
    if (!prefix) return -1;
    fe acc = FE_ONE, value, inv, tmp;
    for (Py_ssize_t j = 0; j < count; j++) {
        prefix[j] = acc;
        fe_from_le32(&value, in + 32 * j);
        if (!fe_is_zero(&value)) fe_mul(&acc, &acc, &value);
    }
    fe_invert(&inv, &acc);
    for (Py_ssize_t j = count - 1; j >= 0; j--) {
        fe_from_le32(&value, in + 32 * j);
        if (fe_is_zero(&value)) {
            memset(out + 32 * j, 0, 32);
            continue;
        }
        fe_mul(&tmp, &inv, &prefix[j]);
        fe_to_bytes(out + 32 * j, &tmp);
        fe_mul(&inv, &inv, &value);
    }
    free(prefix);
    return 0;
}

static PyObject *py_invert(PyObject *self, PyObject *args) {
    Py_buffer points;
    if (!PyArg_ParseTuple(args, "y*", &points)) return NULL;
    if (points.len % 32) {
        PyBuffer_Release(&points);
        PyErr_SetString(PyExc_ValueError, "points come in 32 bytes each");
        return NULL;
    }
    Py_ssize_t count = points.len / 32;
    PyObject *out = PyBytes_FromStringAndSize(NULL, points.len);
    if (!out) {
        PyBuffer_Release(&points);
        return NULL;
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = invert_batch((unsigned char *)PyBytes_AS_STRING(out), points.buf, count);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&points);
    if (failed) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    return out;
}

/* SHA-512 (FIPS 180-4), for RFC 9380's expand_message_xmd: this file then hashes a list without a
 * Python call per message. Tests hold it to hashlib. */
typedef struct {
    uint64_t h[8];
    unsigned char buf[128];
    size_t used;       /* bytes in buf */
    uint64_t total;    /* bytes hashed so far (messages here are far below 2^61 bytes) */
} sha512_ctx;

static const uint64_t SHA512_K[80] = {
    0x428a2f98d728ae22ULL, 0x7137449123ef65cdULL, 0xb5c0fbcfec4d3b2fULL, 0xe9b5dba58189dbbcULL,
    0x3956c25bf348b538ULL, 0x59f111f1b605d019ULL, 0x923f82a4af194f9bULL, 0xab1c5ed5da6d8118ULL,
    0xd807aa98a3030242ULL, 0x12835b0145706fbeULL, 0x243185be4ee4b28cULL, 0x550c7dc3d5ffb4e2ULL,
    0x72be5d74f27b896fULL, 0x80deb1fe3b1696b1ULL, 0x9bdc06a725c71235ULL, 0xc19bf174cf692694ULL,
    0xe49b69c19ef14ad2ULL, 0xefbe4786384f25e3ULL, 0x0fc19dc68b8cd5b5ULL, 0x240ca1cc77ac9c65ULL,
    0x2de92c6f592b0275ULL, 0x4a7484aa6ea6e483ULL, 0x5cb0a9dcbd41fbd4ULL, 0x76f988da831153b5ULL,
    0x983e5152ee66dfabULL, 0xa831c66d2db43210ULL, 0xb00327c898fb213fULL, 0xbf597fc7beef0ee4ULL,
    0xc6e00bf33da88fc2ULL, 0xd5a79147930aa725ULL, 0x06ca6351e003826fULL, 0x142929670a0e6e70ULL,
    0x27b70a8546d22ffcULL, 0x2e1b21385c26c926ULL, 0x4d2c6dfc5ac42aedULL, 0x53380d139d95b3dfULL,
    0x650a73548baf63deULL, 0x766a0abb3c77b2a8ULL, 0x81c2c92e47edaee6ULL, 0x92722c851482353bULL,
    0xa2bfe8a14cf10364ULL, 0xa81a664bbc423001ULL, 0xc24b8b70d0f89791ULL, 0xc76c51a30654be30ULL,
    0xd192e819d6ef5218ULL, 0xd69906245565a910ULL, 0xf40e35855771202aULL, 0x106aa07032bbd1b8ULL,
    0x19a4c116b8d2d0c8ULL, 0x1e376c085141ab53ULL, 0x2748774cdf8eeb99ULL, 0x34b0bcb5e19b48a8ULL,
    0x391c0cb3c5c95a63ULL, 0x4ed8aa4ae3418acbULL, 0x5b9cca4f7763e373ULL, 0x682e6ff3d6b2b8a3ULL,
    0x748f82ee5defb2fcULL, 0x78a5636f43172f60ULL, 0x84c87814a1f0ab72ULL, 0x8cc702081a6439ecULL,
    0x90befffa23631e28ULL, 0xa4506cebde82bde9ULL, 0xbef9a3f7b2c67915ULL, 0xc67178f2e372532bULL,
    0xca273eceea26619cULL, 0xd186b8c721c0c207ULL, 0xeada7dd6cde0eb1eULL, 0xf57d4f7fee6ed178ULL,
    0x06f067aa72176fbaULL, 0x0a637dc5a2c898a6ULL, 0x113f9804bef90daeULL, 0x1b710b35131c471bULL,
    0x28db77f523047d84ULL, 0x32caab7b40c72493ULL, 0x3c9ebe0a15c9bebcULL, 0x431d67c49c100d4cULL,
    0x4cc5d4becb3e42b6ULL, 0x597f299cfc657e2aULL, 0x5fcb6fab3ad6faecULL, 0x6c44198c4a475817ULL,
};

#define ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))

static void sha512_block(uint64_t h[8], const unsigned char *p) {
    uint64_t w[80];
    for (int i = 0; i < 16; i++) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++) v = (v << 8) | p[8 * i + j];
        w[i] = v;
    }
    for (int i = 16; i < 80; i++) {
        uint64_t s0 = ROTR64(w[i - 15], 1) ^ ROTR64(w[i - 15], 8) ^ (w[i - 15] >> 7);
        uint64_t s1 = ROTR64(w[i - 2], 19) ^ ROTR64(w[i - 2], 61) ^ (w[i - 2] >> 6);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint64_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 80; i++) {
        uint64_t S1 = ROTR64(e, 14) ^ ROTR64(e, 18) ^ ROTR64(e, 41);
        uint64_t ch = (e & f) ^ (~e & g);
        uint64_t t1 = hh + S1 + ch + SHA512_K[i] + w[i];
        uint64_t S0 = ROTR64(a, 28) ^ ROTR64(a, 34) ^ ROTR64(a, 39);
        uint64_t maj = (a & b) ^ (a & c) ^ (b & c);
        uint64_t t2 = S0 + maj;
        hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static void sha512_init(sha512_ctx *c) {
    static const uint64_t iv[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
        0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
    };
    memcpy(c->h, iv, sizeof iv);
    c->used = 0;
    c->total = 0;
}

static void sha512_update(sha512_ctx *c, const unsigned char *data, size_t len) {
    c->total += len;
    if (c->used) {
        size_t take = 128 - c->used < len ? 128 - c->used : len;
        memcpy(c->buf + c->used, data, take);
        c->used += take; data += take; len -= take;
        if (c->used < 128) return;
        sha512_block(c->h, c->buf);
        c->used = 0;
    }
    while (len >= 128) {
        sha512_block(c->h, data);
        data += 128; len -= 128;
    }
    memcpy(c->buf, data, len);
    c->used = len;
}

static void sha512_final(sha512_ctx *c, unsigned char out[64]) {
    uint64_t bits = c->total * 8;
    c->buf[c->used++] = 0x80;
    if (c->used > 112) {
        memset(c->buf + c->used, 0, 128 - c->used);
        sha512_block(c->h, c->buf);
        c->used = 0;
    }
    memset(c->buf + c->used, 0, 120 - c->used);   /* the high 64 bits of the 128-bit length are 0 */
    for (int j = 0; j < 8; j++) c->buf[120 + j] = (unsigned char)(bits >> (56 - 8 * j));
    sha512_block(c->h, c->buf);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) out[8 * i + j] = (unsigned char)(c->h[i] >> (56 - 8 * j));
}

/* expand_message_xmd(msg, DST, 96) with SHA-512 (ell = 2): _h2c.uniform_bytes_batch for one message.
 * zpad is the state after the 128 zero bytes of Z_pad; dst_prime is DST || I2OSP(len(DST), 1). */
static void expand96(unsigned char out[96], const sha512_ctx *zpad, const unsigned char *msg, size_t len,
                     const unsigned char *dst_prime, size_t dst_len) {
    static const unsigned char tail0[3] = {0x00, 0x60, 0x00};   /* I2OSP(96, 2) || I2OSP(0, 1) */
    unsigned char b0[64], b1[64], b2[64], chained[64], index;
    sha512_ctx c = *zpad;
    sha512_update(&c, msg, len);
    sha512_update(&c, tail0, 3);
    sha512_update(&c, dst_prime, dst_len);
    sha512_final(&c, b0);
    sha512_init(&c);
    sha512_update(&c, b0, 64);
    index = 1;
    sha512_update(&c, &index, 1);
    sha512_update(&c, dst_prime, dst_len);
    sha512_final(&c, b1);
    for (int i = 0; i < 64; i++) chained[i] = b0[i] ^ b1[i];
    sha512_init(&c);
    sha512_update(&c, chained, 64);
    index = 2;
    sha512_update(&c, &index, 1);
    sha512_update(&c, dst_prime, dst_len);
    sha512_final(&c, b2);
    memcpy(out, b1, 64);
    memcpy(out + 64, b2, 32);
}

/* uniform_bytes(msgs, dst_prime) -> 96 bytes a message: _h2c.uniform_bytes_batch. */
static PyObject *py_uniform_bytes(PyObject *self, PyObject *args) {
    PyObject *msgs;
    Py_buffer dst;
    if (!PyArg_ParseTuple(args, "Oy*", &msgs, &dst)) return NULL;
    PyObject *items = PySequence_Tuple(msgs);   /* our own references: safe without the GIL */
    if (!items) {
        PyBuffer_Release(&dst);
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(items);
    const unsigned char **ptrs = malloc(sizeof(*ptrs) * (size_t)(count ? count : 1));
    Py_ssize_t *lens = malloc(sizeof(*lens) * (size_t)(count ? count : 1));
    PyObject *out = PyBytes_FromStringAndSize(NULL, 96 * count);
    if (!ptrs || !lens || !out) {
        free(ptrs); free(lens); Py_XDECREF(out); Py_DECREF(items); PyBuffer_Release(&dst);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t j = 0; j < count; j++) {
        PyObject *item = PyTuple_GET_ITEM(items, j);
        if (!PyBytes_Check(item)) {
            free(ptrs); free(lens); Py_DECREF(out); Py_DECREF(items); PyBuffer_Release(&dst);
            PyErr_Format(PyExc_TypeError, "message %zd is not bytes", j);
            return NULL;
        }
        ptrs[j] = (const unsigned char *)PyBytes_AS_STRING(item);
        lens[j] = PyBytes_GET_SIZE(item);
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    static const unsigned char zeros[128] = {0};
    sha512_ctx zpad;
    sha512_init(&zpad);
    sha512_update(&zpad, zeros, 128);
    for (Py_ssize_t j = 0; j < count; j++)
        expand96(o + 96 * j, &zpad, ptrs[j], (size_t)lens[j], dst.buf, (size_t)dst.len);
    Py_END_ALLOW_THREADS
    free(ptrs); free(lens); Py_DECREF(items); PyBuffer_Release(&dst);
    return out;
}

static PyObject *py_map_to_u(PyObject *self, PyObject *args) {
    Py_buffer uniform;
    if (!PyArg_ParseTuple(args, "y*", &uniform)) return NULL;
    if (uniform.len % 96) {
        PyBuffer_Release(&uniform);
        PyErr_SetString(PyExc_ValueError, "uniform bytes come in 96-byte messages");
        return NULL;
    }
    Py_ssize_t count = uniform.len / 96;
    PyObject *out = PyBytes_FromStringAndSize(NULL, 32 * count);
    char *identity = malloc((size_t)(count ? count : 1));
    if (!out || !identity) {
        PyBuffer_Release(&uniform);
        Py_XDECREF(out);
        free(identity);
        return PyErr_NoMemory();
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = map_batch((unsigned char *)PyBytes_AS_STRING(out), identity, uniform.buf, count);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&uniform);
    if (failed) {
        Py_DECREF(out);
        free(identity);
        return PyErr_NoMemory();
    }
    PyObject *identities = PyList_New(0);
    for (Py_ssize_t j = 0; identities && j < count; j++) {
        if (!identity[j]) continue;
        PyObject *index = PyLong_FromSsize_t(j);
        if (!index || PyList_Append(identities, index) < 0) Py_CLEAR(identities);
        Py_XDECREF(index);
    }
    free(identity);
    if (!identities) {
        Py_DECREF(out);
        return NULL;
    }
    return Py_BuildValue("(NN)", out, identities);
}

static PyMethodDef methods[] = {
    {"map_to_u", py_map_to_u, METH_VARARGS,
     "map_to_u(uniform) -> (u bytes, identity indices): 96 bytes (u0 || u1, big-endian) a message."},
    {"invert", py_invert, METH_VARARGS,
     "invert(points) -> bytes: 1/u mod p of each 32-byte little-endian canonical u (0 for 0)."},
    {"uniform_bytes", py_uniform_bytes, METH_VARARGS,
     "uniform_bytes(msgs, dst_prime) -> bytes: expand_message_xmd (SHA-512) to 96 bytes, each message."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_h2c_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__h2c_native(void) { return PyModule_Create(&module); }
