#include "colormaps.h"

#include <algorithm>
#include <cmath>

namespace es {

namespace {
#include "colormaps.inc"

const unsigned char (*table(const QString& name))[3] {
    if (name == "blues") return k_blues;
    if (name == "spectral") return k_spectral;
    return k_viridis;
}
}  // namespace

QRgb colormapEntry(const QString& name, int i) {
    const auto* t = table(name);
    i = std::clamp(i, 0, 255);
    return qRgb(t[i][0], t[i][1], t[i][2]);
}

QColor colormapColor(const QString& name, double value, double lo, double hi) {
    if (std::isnan(value)) return {};
    if (name == "experts") {  // categories: value = an expert id in [lo, hi] (lo = 0)
        const int n = std::max(1, static_cast<int>(std::lround(hi)) + 1);
        return expertColor(std::clamp(static_cast<int>(std::lround(value)), 0, n - 1), n);
    }
    // matplotlib's Normalize: (v - lo) / (hi - lo), 0 when the range is empty
    const double t = hi > lo ? (value - lo) / (hi - lo) : 0.0;
    double x = t * 256.0;
    int i = x >= 256.0 ? 255 : x < 0.0 ? 0 : static_cast<int>(x);
    return QColor(colormapEntry(name, i));
}

QColor categoryColor(const QString& name, int i, int n) {
    if (n <= 1) return QColor(colormapEntry(name, 0));
    return colormapColor(name, (i + 0.5) / n, 0.0, 1.0);
}

QColor paletteColor(int i) {
    const int n = static_cast<int>(sizeof k_tab10 / sizeof k_tab10[0]);
    i = ((i % n) + n) % n;
    return QColor(k_tab10[i][0], k_tab10[i][1], k_tab10[i][2]);
}

QColor expertColor(int e, int n) { return n <= 10 ? paletteColor(e) : categoryColor("spectral", e, n); }

}  // namespace es
