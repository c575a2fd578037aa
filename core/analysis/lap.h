#pragma once
// Linear assignment (maximum-weight perfect matching on a dense square matrix) for S3, and Kendall's
// tau of a permutation. Standard library only; all arithmetic in double.
#include <cstdint>
#include <vector>

namespace es {

// Exact maximum-weight perfect assignment on a dense n x n matrix (row-major, float scores):
// returns p with p[row] = column, maximising sum_row score[row, p[row]]. Shortest augmenting
// paths with dual potentials (Jonker-Volgenant family, O(n^3) worst case), computed in double.
// Same optimum as scipy.optimize.linear_sum_assignment(maximize=True). Where the JV initialisation
// is poor (a strong rank-one part, degenerate ties), the potentials come from an epsilon-scaling
// auction first, and the augmenting paths finish exactly from there.
// Scores must be finite (std::invalid_argument otherwise, and for n < 0 or a null score with n > 0).
std::vector<int32_t> assignExact(const float* score, int n);

// Approximate maximum assignment by the forward auction algorithm with epsilon scaling
// (Bertsekas), for large n: the result's total is within n * finalEps of the optimum, where
// finalEps = relEps * (max score - min score). Always returns a permutation.
// (If a phase ever exceeds its bid cap, the remaining rows are completed greedily: still a
// permutation, without the bound.) Same input requirements as assignExact; relEps <= 0 -> 1e-4.
std::vector<int32_t> assignAuction(const float* score, int n, double relEps = 1e-4);

// Kendall's tau between p and the identity 0..n-1 (p a permutation: no ties), O(n log n) by
// counting inversions with a merge sort; equal to scipy.stats.kendalltau(range(n), p).statistic. n < 2 -> 1.
// std::invalid_argument when p is not a permutation of 0..n-1.
double kendallTauOfPermutation(const std::vector<int32_t>& p);

// Convenience: the solver used for S3: exact up to maxExact (4096), auction above.
// *exact (when given) says which one ran.
std::vector<int32_t> assignMax(const float* score, int n, int maxExact = 4096, bool* exact = nullptr);

}  // namespace es
