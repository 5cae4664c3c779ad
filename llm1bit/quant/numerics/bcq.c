/* BCQ refinement rounds on a CPU, one group at a time (bcq.py's `_rounds_many`, the same bits).
 *
 * A lat slab's fit is a batch of a few hundred groups of ~128 entries; in torch a round is ~85 small
 * operations whatever the batch (about 230 us), and the batch runs until its slowest group repeats. Here
 * a round of one group is a few hundred scalar steps and each group stops at its own repeat.
 *
 * Every step is bcq.py's, in its order and precision (built with -ffp-contract=off, no fast-math):
 *   cg         float32, warm start, q steps, eps 1e-6, every sum over q left to right (`cg`, `_cg_scalar`)
 *   scales     |a| sorted descending, then APoT on the float32 bits (`apot_values`)
 *   levels     sum over planes b = 0 .. q-1 of sign * scale, left to right (`levels`); stable ascending sort
 *   mids       (v[i] + v[i+1]) * 0.5
 *   codes      entries x < mid go left (searchsorted on the sorted x)
 *   normal eq. counts and float64 prefix sums per level, summed over sign-table index in float64, rounded
 *              to float32 (`_normal_table`)
 *   early exit the state (scales after APoT) of round r equal to that of round r - p (p <= 4, shortest
 *              first): the sequence is periodic, the answer is round t in r-p+1 .. r with t = rounds mod p
 *              (`_resolve`); the result is that of running every round. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_Q 8
#define MAX_L (1 << MAX_Q)
#define MAX_PERIOD 4
#define CG_EPS 1e-6f
#define POT_MANTISSA 3474676u /* ceil((sqrt(2) - 1) * 2**23), apot.py */

int llm1bit_bcq_abi_version(void) { return 1; }

static float pot(float v) { /* PoT(v) with its sign, from the bits (apot.py `_pot`) */
    uint32_t u;
    memcpy(&u, &v, 4);
    u = (u + (0x800000u - POT_MANTISSA)) & 0xFF800000u;
    memcpy(&v, &u, 4);
    return v;
}

static float dot(const float *u, const float *v, int q) {
    float s = u[0] * v[0];
    for (int i = 1; i < q; i++) s = s + u[i] * v[i];
    return s;
}

static void cg(const float *A, const float *b, float *a, int q) {
    float r[MAX_Q], p[MAX_Q], ap[MAX_Q];
    for (int i = 0; i < q; i++) {
        r[i] = b[i] - dot(A + i * q, a, q);
        p[i] = r[i];
    }
    float rs = dot(r, r, q);
    for (int it = 0; it < q; it++) {
        for (int i = 0; i < q; i++) ap[i] = dot(A + i * q, p, q);
        float alpha = rs / (dot(p, ap, q) + CG_EPS);
        for (int i = 0; i < q; i++) a[i] = a[i] + alpha * p[i];
        if (it == q - 1) break; /* the last step's residual and direction are never read */
        for (int i = 0; i < q; i++) r[i] = r[i] - alpha * ap[i];
        float rs_new = dot(r, r, q);
        float beta = rs_new / (rs + CG_EPS);
        for (int i = 0; i < q; i++) p[i] = r[i] + beta * p[i];
        rs = rs_new;
    }
}

static int lower_bound(const float *xs, int n, float v) { /* entries < v; branch-free halving */
    if (n == 0) return 0;
    const float *base = xs;
    while (n > 1) {
        int half = n >> 1;
        base += base[half - 1] < v ? half : 0;
        n -= half;
    }
    return (int)(base - xs) + (*base < v);
}

/* One group: xs (n sorted entries), csum (n + 1 float64 prefix sums), btb (q x q) / btx / a: round 1's normal
 * equations and warm start. Writes the sorted |a| (before APoT) of the state after `rounds` rounds to `out`;
 * returns the rounds computed. */
static int fit_group(const float *xs, const double *csum, int n, int q, int rounds, int terms, int early,
                     const float *btb, const float *btx, const float *a0, float *out) {
    const int L = 1 << q;
    float A[MAX_Q * MAX_Q], b[MAX_Q], a[MAX_Q];
    float raws[MAX_PERIOD + 1][MAX_Q], states[MAX_PERIOD + 1][MAX_Q]; /* round r at r % (MAX_PERIOD + 1) */
    memcpy(A, btb, sizeof(float) * q * q);
    memcpy(b, btx, sizeof(float) * q);
    memcpy(a, a0, sizeof(float) * q);
    for (int r = 1; r <= rounds; r++) {
        cg(A, b, a, q);
        float *raw = raws[r % (MAX_PERIOD + 1)], *s = states[r % (MAX_PERIOD + 1)];
        for (int i = 0; i < q; i++) { /* |a| sorted descending (insertion) */
            float v = a[i] < 0 ? -a[i] : a[i];
            int j = i;
            for (; j > 0 && raw[j - 1] < v; j--) raw[j] = raw[j - 1];
            raw[j] = v;
        }
        for (int i = 0; i < q; i++) {
            float v = raw[i], t = pot(v);
            for (int k = 1; k < terms; k++) t = t + pot(v - t);
            s[i] = terms ? t : v;
        }
        if (r == rounds) {
            memcpy(out, raw, sizeof(float) * q);
            return r;
        }
        if (early && r >= 2) {
            int limit = r - 1 < MAX_PERIOD ? r - 1 : MAX_PERIOD;
            for (int p = 1; p <= limit; p++) {
                const float *past = states[(r - p) % (MAX_PERIOD + 1)];
                int same = 1;
                for (int i = 0; i < q; i++) same &= past[i] == s[i];
                if (same) {
                    int j = r - p, t = j + 1 + (rounds - j - 1) % p;
                    memcpy(out, raws[t % (MAX_PERIOD + 1)], sizeof(float) * q);
                    return r;
                }
            }
        }
        memcpy(a, s, sizeof(float) * q);
        /* levels of the sign table (row l: -1 in plane i iff bit q-1-i of l), sorted stably */
        float v[MAX_L];
        int order[MAX_L];
        for (int l = 0; l < L; l++) {
            float lv = 0.0f;
            for (int i = 0; i < q; i++) {
                float term = ((l >> (q - 1 - i)) & 1) ? -s[i] : s[i];
                lv = i == 0 ? term : lv + term;
            }
            int j = l;
            for (; j > 0 && v[j - 1] > lv; j--) {
                v[j] = v[j - 1];
                order[j] = order[j - 1];
            }
            v[j] = lv;
            order[j] = l;
        }
        /* counts and sums per level, by sign-table index */
        double count[MAX_L], sum[MAX_L];
        int lo = 0;
        for (int l = 0; l < L; l++) {
            int hi = l == L - 1 ? n : lower_bound(xs, n, (v[l] + v[l + 1]) * 0.5f);
            count[order[l]] = (double)(hi - lo);
            sum[order[l]] = csum[hi] - csum[lo];
            lo = hi;
        }
        for (int i = 0; i < q; i++) {
            for (int j = 0; j < q; j++) {
                double acc = 0.0;
                for (int l = 0; l < L; l++) {
                    int si = (l >> (q - 1 - i)) & 1, sj = (l >> (q - 1 - j)) & 1;
                    acc = acc + (si == sj ? count[l] : -count[l]);
                }
                A[i * q + j] = (float)acc;
            }
            double acc = 0.0;
            for (int l = 0; l < L; l++) acc = acc + (((l >> (q - 1 - i)) & 1) ? -sum[l] : sum[l]);
            b[i] = (float)acc;
        }
    }
    memcpy(out, a, sizeof(float) * q); /* rounds == 0: not reached from bcq.py */
    return 0;
}

/* G groups: xs (G, stride) float32, each row sorted with its `sizes[g]` entries first; btb (G, q, q), btx (G, q),
 * a (G, q): round 1's inputs. out (G, q): the sorted |a| before APoT of each group's state after `rounds`.
 * terms: APoT terms (0: none). Returns the most rounds any group computed, or -1 for a q this file does not take. */
int llm1bit_bcq_rounds(int G, int stride, int q, int rounds, int terms, int early, const float *xs,
                       const int64_t *sizes, const float *btb, const float *btx, const float *a, float *out) {
    if (q < 1 || q > MAX_Q || rounds < 1) return -1;
    double *csum = malloc(sizeof(double) * (stride + 1));
    if (!csum) return -1;
    int most = 0;
    for (int g = 0; g < G; g++) {
        const float *x = xs + (int64_t)g * stride;
        int n = (int)sizes[g];
        csum[0] = 0.0;
        for (int i = 0; i < n; i++) csum[i + 1] = csum[i] + (double)x[i];
        int r = fit_group(x, csum, n, q, rounds, terms, early, btb + (int64_t)g * q * q, btx + (int64_t)g * q,
                          a + (int64_t)g * q, out + (int64_t)g * q);
        if (r > most) most = r;
    }
    free(csum);
    return most;
}
