#include "analysis/lap.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace es {

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
// assignExact switches to the auction warm start when more than n / kWarmFreeDiv rows are left free
// by the Jonker-Volgenant initialisation or the augmenting paths settle more than kScanBudget * n
// columns; the warm auction runs down to kWarmRelEps * score range.
constexpr long long kWarmFreeDiv = 8;
constexpr long long kScanBudget = 16;
constexpr double kWarmRelEps = 1e-6;

// Validates the arguments; returns the minimum and maximum score (0, 0 when n == 0).
std::pair<double, double> checkScores(const float* score, int n, const char* who) {
    if (n < 0) throw std::invalid_argument(std::string(who) + ": negative size " + std::to_string(n));
    if (n == 0) return {0.0, 0.0};
    if (!score) throw std::invalid_argument(std::string(who) + ": null score matrix");
    const size_t nn = static_cast<size_t>(n) * static_cast<size_t>(n);
    float lo = score[0], hi = score[0];
    bool finite = true;
    for (size_t k = 0; k < nn; ++k) {
        const float s = score[k];
        finite &= std::isfinite(s);
        lo = std::min(lo, s);
        hi = std::max(hi, s);
    }
    if (!finite) throw std::invalid_argument(std::string(who) + ": score matrix has non-finite values");
    return {lo, hi};
}

const float* rowOf(const float* score, int n, int i) { return score + static_cast<size_t>(i) * static_cast<size_t>(n); }

// The state of the exact solver, on the cost c[i][j] = -score[i][j] (read on the fly from the float
// rows): x[i] = column of row i, y[j] = row of column j (-1: free), v = column potentials. Invariant
// between the steps: every assigned row's column minimises c[i][j] - v[j] over its row (dual
// feasibility with u[i] = that minimum, and complementary slackness on the assigned pairs).
struct ExactState {
    std::vector<double> v;
    std::vector<int> x, y, freeRows;
};

// Jonker-Volgenant (1987) initialisation: column reduction, reduction transfer and two passes of
// augmenting row reduction (each pass capped, so that near-ties cannot make it run long).
void jvInit(const float* score, int n, ExactState& s) {
    std::vector<double>& v = s.v;
    std::vector<int>& x = s.x;
    std::vector<int>& y = s.y;
    std::vector<int>& freeRows = s.freeRows;
    v.assign(n, kInf);
    x.assign(n, -1);
    y.assign(n, -1);
    freeRows.clear();

    // Column reduction: v[j] = min_i c[i][j] (row by row, contiguous), first row attaining it.
    std::vector<int> argMin(n, 0), matches(n, 0);
    for (int i = 0; i < n; ++i) {
        const float* r = rowOf(score, n, i);
        for (int j = 0; j < n; ++j) {
            const double c = -static_cast<double>(r[j]);
            if (c < v[j]) {
                v[j] = c;
                argMin[j] = i;
            }
        }
    }
    for (int j = n - 1; j >= 0; --j) {
        const int i = argMin[j];
        if (++matches[i] == 1) {
            x[i] = j;
            y[j] = i;
        }
    }
    // Reduction transfer: a row that won exactly one column lowers that column's potential by its
    // second-best reduced cost, which keeps the column the row's minimum (ties allowed).
    for (int i = 0; i < n; ++i) {
        if (matches[i] == 0) {
            freeRows.push_back(i);
        } else if (matches[i] == 1) {
            const float* r = rowOf(score, n, i);
            const int j1 = x[i];
            double mu = kInf;
            for (int j = 0; j < n; ++j)
                if (j != j1) mu = std::min(mu, -static_cast<double>(r[j]) - v[j]);
            v[j1] -= mu - (-static_cast<double>(r[j1]) - v[j1]);
        }
    }

    // Augmenting row reduction: a free row takes its best column j1 (among tied ones a free column),
    // lowering v[j1] so that j1 stays (tied) minimal for it and becomes less attractive to all others;
    // on a tie with an owned j1 it takes the second-best column. The displaced owner is processed
    // next (strict case) or in the next pass (tie).
    for (int pass = 0; pass < 2 && !freeRows.empty(); ++pass) {
        const int prevFree = static_cast<int>(freeRows.size());
        int k = 0, numFree = 0;
        long long steps = 0;
        const long long maxSteps = 8LL * n + 1000;
        while (k < prevFree) {
            if (++steps > maxSteps) {  // hand the rest to the augmentation phase
                while (k < prevFree) freeRows[numFree++] = freeRows[k++];
                break;
            }
            const int i = freeRows[k++];
            const float* r = rowOf(score, n, i);
            double u1 = -static_cast<double>(r[0]) - v[0], u2 = kInf;
            int j1 = 0, j2 = -1;
            for (int j = 1; j < n; ++j) {
                const double h = -static_cast<double>(r[j]) - v[j];
                if (h < u2) {
                    if (h > u1 || (h == u1 && (y[j] >= 0 || y[j1] < 0))) {  // a tie goes to a free column
                        u2 = h;
                        j2 = j;
                    } else {
                        u2 = u1;
                        j2 = j1;
                        u1 = h;
                        j1 = j;
                    }
                }
            }
            int i0 = y[j1];
            const bool strict = u1 < u2;
            if (strict) v[j1] -= u2 - u1;
            else if (i0 >= 0) i0 = y[j1 = j2];  // tie: take the second column instead
            if (i0 >= 0) {
                x[i0] = -1;
                if (strict) freeRows[--k] = i0;  // reprocess the displaced row at once
                else freeRows[numFree++] = i0;
            }
            x[i] = j1;
            y[j1] = i;
        }
        freeRows.resize(numFree);
    }
}

// Shortest augmenting paths, one per free row: Dijkstra on the reduced costs, one column settled per
// step. Every pass runs over all n columns contiguously; a settled column is masked by d = +inf and
// vS = -inf (its reduced cost is then +inf, so it is never relaxed again), its final distance kept
// aside. Relaxation and the search for the next minimum are separate loops (faster than one fused
// loop); among tied minima a free column wins (degenerate matrices, e.g. equal rows, end at once).
// Stops between two augmentations once more than maxScans columns have been settled: returns false,
// with the rows still free in s.freeRows (the invariant holds).
bool augment(const float* score, int n, ExactState& s, long long maxScans) {
    std::vector<double>& v = s.v;
    std::vector<int>& x = s.x;
    std::vector<int>& y = s.y;
    std::vector<double> dBuf(n), vSBuf(n), readyD(n);
    std::vector<int> predBuf(n), readyCols(n);
    double* const d = dBuf.data();
    double* const vS = vSBuf.data();
    int* const pred = predBuf.data();
    long long scans = 0;
    for (size_t next = 0; next < s.freeRows.size(); ++next) {
        if (scans > maxScans) {
            s.freeRows.erase(s.freeRows.begin(), s.freeRows.begin() + static_cast<std::ptrdiff_t>(next));
            return false;
        }
        const int f = s.freeRows[next];
        const float* rf = rowOf(score, n, f);
        int jMin = 0, numReady = 0;
        double best = kInf;
        for (int j = 0; j < n; ++j) {
            vS[j] = v[j];
            d[j] = -static_cast<double>(rf[j]) - v[j];
            pred[j] = f;
            if (d[j] <= best && (d[j] < best || (y[j] < 0 && y[jMin] >= 0))) {
                best = d[j];
                jMin = j;
            }
        }
        while (y[jMin] >= 0) {  // settle jMin, relax its row
            if (!(best < kInf)) throw std::logic_error("assignExact: no augmenting path");  // cannot happen
            const int j1 = jMin, i = y[j1];
            readyCols[numReady] = j1;
            readyD[numReady++] = best;
            ++scans;
            const float* r = rowOf(score, n, i);
            const double u1 = -static_cast<double>(r[j1]) - v[j1] - best;
            d[j1] = kInf;
            vS[j1] = -kInf;
            for (int j = 0; j < n; ++j) {
                const double h = -static_cast<double>(r[j]) - vS[j] - u1;
                const bool better = h < d[j];
                d[j] = better ? h : d[j];
                pred[j] = better ? i : pred[j];
            }
            best = kInf;
            jMin = 0;
            for (int j = 0; j < n; ++j)
                if (d[j] <= best && (d[j] < best || (y[j] < 0 && y[jMin] >= 0))) {
                    best = d[j];
                    jMin = j;
                }
        }
        // Potentials of the settled columns, then flip the path ending at the free column jMin.
        for (int k = 0; k < numReady; ++k) v[readyCols[k]] += readyD[k] - best;
        for (int j = jMin;;) {
            const int i = pred[j];
            y[j] = i;
            std::swap(j, x[i]);
            if (i == f) break;
        }
    }
    s.freeRows.clear();
    return true;
}

// Forward (Gauss-Seidel) auction with epsilon scaling. Each unassigned row bids for its best column
// j1 under the current prices, raising p[j1] by (best - second best + eps), and evicts the previous
// owner. A phase ends when every row is assigned; the next phase divides eps by kTheta and keeps
// only the pairs that still satisfy eps-complementary slackness. At the end (eps = finalEps) the
// assignment's total is within n * finalEps of the optimum. A phase stops after maxBids bids
// (capped = true; x then has unassigned rows).
struct AuctionState {
    std::vector<double> price;
    std::vector<int> x, owner;
    bool capped = false;
};

void runAuction(const float* score, int n, double range, double finalEps, AuctionState& a) {
    constexpr double kTheta = 6;
    // Bid cap per phase: far above what well-posed problems need (tens of bids per row in all).
    const long long maxBids = 100LL * n + 1000;
    std::vector<double>& price = a.price;
    std::vector<int>& x = a.x;
    std::vector<int>& owner = a.owner;
    price.assign(n, 0.0);
    x.assign(n, -1);
    owner.assign(n, -1);
    a.capped = false;
    std::vector<int> queue;
    queue.reserve(n);
    double eps = std::max(range / 4, finalEps);

    // Best column of row i under the current prices, its value and the second-best value.
    auto best2 = [&](int i, int& j1, double& v1, double& v2) {
        const float* r = rowOf(score, n, i);
        v1 = static_cast<double>(r[0]) - price[0];
        v2 = -kInf;
        j1 = 0;
        for (int j = 1; j < n; ++j) {
            const double h = static_cast<double>(r[j]) - price[j];
            if (h > v2) {
                if (h > v1) {
                    v2 = v1;
                    v1 = h;
                    j1 = j;
                } else {
                    v2 = h;
                }
            }
        }
    };

    for (bool first = true;; first = false) {
        queue.clear();
        for (int i = 0; i < n; ++i) {
            if (!first && x[i] >= 0) {
                const double own = static_cast<double>(rowOf(score, n, i)[x[i]]) - price[x[i]];
                int j1;
                double v1, v2;
                best2(i, j1, v1, v2);
                if (own >= v1 - eps) continue;  // still eps-CS: keep
                owner[x[i]] = -1;
                x[i] = -1;
            }
            queue.push_back(i);
        }
        long long bids = 0;
        size_t head = 0;  // FIFO over queue; evicted rows are appended
        while (head < queue.size()) {
            if (++bids > maxBids) {
                a.capped = true;
                return;
            }
            const int i = queue[head++];
            int j1;
            double v1, v2;
            best2(i, j1, v1, v2);
            price[j1] += v1 - v2 + eps;
            const int prev = owner[j1];
            owner[j1] = i;
            x[i] = j1;
            if (prev >= 0) {
                x[prev] = -1;
                queue.push_back(prev);
            }
            if (head > static_cast<size_t>(n) && head * 2 > queue.size()) {  // compact the FIFO
                queue.erase(queue.begin(), queue.begin() + static_cast<std::ptrdiff_t>(head));
                head = 0;
            }
        }
        if (eps <= finalEps) return;
        eps = std::max(eps / kTheta, finalEps);
    }
}

// Warm start of the exact solver from an auction: v = -prices (near-optimal duals), each auctioned
// column's potential raised so that its owner is exactly at its row minimum, then every assigned row
// that is not at its row minimum any more is freed. Restores the ExactState invariant.
void warmStartFromAuction(const float* score, int n, const AuctionState& a, ExactState& s) {
    std::vector<double>& v = s.v;
    std::vector<int>& x = s.x;
    std::vector<int>& y = s.y;
    v.resize(n);
    for (int j = 0; j < n; ++j) v[j] = -a.price[j];
    x.assign(a.x.begin(), a.x.end());
    y.assign(n, -1);
    auto rowMin = [&](const float* r) {
        double m = kInf;
        for (int j = 0; j < n; ++j) m = std::min(m, -static_cast<double>(r[j]) - v[j]);
        return m;
    };
    for (int i = 0; i < n; ++i) {
        if (x[i] < 0) continue;
        y[x[i]] = i;
        const float* r = rowOf(score, n, i);
        const double slack = (-static_cast<double>(r[x[i]]) - v[x[i]]) - rowMin(r);
        if (slack > 0) v[x[i]] += slack;
    }
    s.freeRows.clear();
    for (int i = 0; i < n; ++i) {
        if (x[i] >= 0) {
            const float* r = rowOf(score, n, i);
            if (-static_cast<double>(r[x[i]]) - v[x[i]] <= rowMin(r)) continue;
            y[x[i]] = -1;
            x[i] = -1;
        }
        s.freeRows.push_back(i);
    }
}
}  // namespace

// Jonker-Volgenant initialisation, then shortest augmenting paths. Where the initialisation's
// potentials are poor (matrices with a strong rank-one part, as cosines of vectors sharing a common
// direction, or degenerate ties), the paths are long and the solver would take O(n^3); so when the
// initialisation leaves more than n / kWarmFreeDiv rows free, or the paths have settled more than
// kScanBudget * n columns, the state is rebuilt from an epsilon-scaling auction's prices (near-optimal
// potentials) and the augmenting paths finish from there. Either way the result is exact.
std::vector<int32_t> assignExact(const float* score, int n) {
    const auto [lo, hi] = checkScores(score, n, "assignExact");
    if (n == 0) return {};
    if (n == 1) return {0};
    ExactState s;
    jvInit(score, n, s);
    const bool warmNow = static_cast<long long>(s.freeRows.size()) * kWarmFreeDiv > n;
    if (hi > lo && (warmNow || !augment(score, n, s, kScanBudget * n))) {
        AuctionState a;
        runAuction(score, n, hi - lo, kWarmRelEps * (hi - lo), a);
        warmStartFromAuction(score, n, a, s);
    }
    augment(score, n, s, std::numeric_limits<long long>::max());
    return std::vector<int32_t>(s.x.begin(), s.x.end());
}

std::vector<int32_t> assignAuction(const float* score, int n, double relEps) {
    const auto [lo, hi] = checkScores(score, n, "assignAuction");
    if (n == 0) return {};
    const double range = hi - lo;
    if (n == 1 || range <= 0) {  // a constant matrix: every permutation is optimal
        std::vector<int32_t> identity(n);
        for (int i = 0; i < n; ++i) identity[i] = i;
        return identity;
    }
    if (!(relEps > 0)) relEps = 1e-4;
    AuctionState a;
    runAuction(score, n, range, relEps * range, a);
    if (a.capped) {  // complete greedily: each unassigned row takes its best free column
        for (int i = 0; i < n; ++i) {
            if (a.x[i] >= 0) continue;
            const float* r = rowOf(score, n, i);
            int jb = -1;
            double vb = -kInf;
            for (int j = 0; j < n; ++j) {
                const double h = static_cast<double>(r[j]) - a.price[j];
                if (a.owner[j] < 0 && (jb < 0 || h > vb)) {
                    vb = h;
                    jb = j;
                }
            }
            a.x[i] = jb;
            a.owner[jb] = i;
        }
    }
    return std::vector<int32_t>(a.x.begin(), a.x.end());
}

double kendallTauOfPermutation(const std::vector<int32_t>& p) {
    const size_t n = p.size();
    {
        std::vector<char> seen(n, 0);
        for (const int32_t v : p) {
            if (v < 0 || static_cast<size_t>(v) >= n || seen[v])
                throw std::invalid_argument("kendallTauOfPermutation: not a permutation of 0..n-1");
            seen[v] = 1;
        }
    }
    if (n < 2) return 1.0;
    // Bottom-up merge sort counting inversions (pairs a < b with p[a] > p[b]: the discordant pairs).
    std::vector<int32_t> a(p), b(n);
    long long inversions = 0;
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            const size_t mid = std::min(lo + width, n), hi = std::min(lo + 2 * width, n);
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                if (a[i] <= a[j]) {
                    b[k++] = a[i++];
                } else {
                    inversions += static_cast<long long>(mid - i);
                    b[k++] = a[j++];
                }
            }
            while (i < mid) b[k++] = a[i++];
            while (j < hi) b[k++] = a[j++];
        }
        a.swap(b);
    }
    const double pairs = static_cast<double>(n) * static_cast<double>(n - 1) / 2;
    return (pairs - 2.0 * static_cast<double>(inversions)) / pairs;
}

std::vector<int32_t> assignMax(const float* score, int n, int maxExact, bool* exact) {
    const bool useExact = n <= maxExact;
    if (exact) *exact = useExact;
    return useExact ? assignExact(score, n) : assignAuction(score, n);
}

}  // namespace es
