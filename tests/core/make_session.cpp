// Test and benchmark helper: writes complete sessions through the real session code.
//   make_session OUT [--tokens N] [--layers L] [--experts E] [--prompts P]   a new session: one
//        run with every optional dataset, results of every array type, view states and notes
//   make_session --append OUT NAME [--tokens N] ...   opens OUT, adds run NAME, saves
//   make_session --copy IN OUT                        opens IN, saves it as OUT (round trip)
//   make_session --first-layer IN                     opens IN and reads its first layer;
//        prints {"open_s", "first_layer_s", "max_rss_mb"}
// Traces are seeded pseudo-random data of the right shapes (the session code does not care
// what the numbers mean); timings go to stdout as JSON.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "error.h"
#include "session/session.h"

using Clock = std::chrono::steady_clock;

namespace {

struct Opts {
    int64_t tokens = 64, layers = 4, experts = 8, prompts = 3, topK = 2, vocab = 50;
};

es::SessionModel model(const Opts& o) {
    es::SessionModel m;
    m.modelType = "mixtral";
    m.numLayers = o.layers;
    m.numExperts = o.experts;
    m.topK = o.topK;
    m.hidden = 64;
    m.configJson = R"({"model_type": "mixtral", "note": "synthetic session for tests"})";
    m.checkpointPath = "/nonexistent/checkpoint";
    m.fingerprint = "sha256:" + std::string(64, '0');
    return m;
}

es::RunTrace trace(const Opts& o, unsigned seed, bool full) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    es::RunTrace t;
    t.device = "cpu";
    t.dtype = "float32";
    t.vocab = o.vocab;
    for (int64_t i = 0; i < o.tokens; ++i) t.tokens.push_back(static_cast<int64_t>(rng() % o.vocab));
    t.promptOffsets.push_back(0);
    for (int64_t p = 1; p < o.prompts; ++p) t.promptOffsets.push_back(o.tokens * p / o.prompts);
    t.promptOffsets.push_back(o.tokens);
    if (full)
        for (int64_t p = 0; p < o.prompts; ++p) t.promptTexts.push_back("prompt " + std::to_string(p) + " — ünïcode");
    if (full)
        for (int64_t i = 0; i < o.tokens; ++i) {
            std::string b = i % 7 == 3 ? std::string("\xE4", 1) : " tok" + std::to_string(i % 13);
            t.tokenBytes.push_back(b);
            t.tokenPieces.push_back(b == "\xE4" ? "\\xE4" : b);
        }
    for (int64_t l = 0; l < o.layers; ++l) {
        es::LayerTrace lt;
        lt.layer = static_cast<int>(l);
        lt.numExperts = o.experts;
        lt.topK = o.topK;
        lt.routerLogits.resize(static_cast<size_t>(o.tokens * o.experts));
        for (auto& x : lt.routerLogits) x = nd(rng);
        for (int64_t i = 0; i < o.tokens; ++i)
            for (int64_t k = 0; k < o.topK; ++k) {
                lt.topkExperts.push_back(static_cast<int32_t>((i + k * 3) % o.experts));
                lt.topkWeights.push_back(k == 0 ? 0.7f : 0.3f / static_cast<float>(o.topK - 1));
            }
        if (full) {
            lt.expertOutputNorms.resize(lt.routerLogits.size());
            for (auto& x : lt.expertOutputNorms) x = std::abs(nd(rng));
            lt.sharedOutputNorms.resize(static_cast<size_t>(o.tokens));
            for (auto& x : lt.sharedOutputNorms) x = std::abs(nd(rng));
        }
        t.layers.push_back(std::move(lt));
    }
    if (full) {
        t.logits.resize(static_cast<size_t>(o.tokens * o.vocab));
        for (auto& x : t.logits) x = nd(rng);
    }
    return t;
}

void addExtras(es::Session& s, const Opts& o) {
    std::vector<float> sim(static_cast<size_t>(o.experts * o.experts));
    for (int64_t a = 0; a < o.experts; ++a)
        for (int64_t b = 0; b < o.experts; ++b)
            sim[static_cast<size_t>(a * o.experts + b)] = a == b ? 1.f : 0.1f * static_cast<float>((a + b) % 7);
    es::Result r;
    r.kind = "S1";
    r.paramsJson = R"({"layer": 0, "matrix": "gate", "rows": ["0", "1", "SE"]})";
    r.provenanceJson = R"({"tool": "expertscope", "checkpoint_fingerprint": "sha256:0"})";
    r.arrays["similarity"] = es::Array::f32({o.experts, o.experts}, sim);
    r.arrays["values64"] = es::Array::f64({3}, {1.5, -2.25, 1e-300});
    r.arrays["counts"] = es::Array::i32({2, 2}, {1, 2, 3, 4});
    r.arrays["ids"] = es::Array::i64({0}, {});
    s.putResult("S1.layer0.gate", r);
    es::Result d;
    d.kind = "D2";
    d.paramsJson = R"({"run": "r0"})";
    d.arrays["rank_counts"] = es::Array::i64({o.experts}, std::vector<int64_t>(static_cast<size_t>(o.experts), 5));
    s.putResult("D2.r0", d);
    // a nested result like the analyses write: an id and array names with segments, attributes
    es::Result w;
    w.kind = "S1";
    std::vector<std::string> labels;
    for (int64_t e = 0; e < o.experts; ++e) labels.push_back(std::to_string(e));
    for (const char* m : {"gate", "up", "down"})
        w.arrays[std::string("layers/0/") + m] =
            es::Array::f32({o.experts, o.experts}, sim).with("labels", es::AttrValue::text(labels));
    w.arrays["r2"] = es::Array::f32({1, 3}, {0.5f, 0.25f, 0.125f})
                         .with("layers", es::AttrValue::i32s({0}))
                         .with("columns", es::AttrValue::text({"gate", "up", "down"}))
                         .with("r2_paper_mean", es::AttrValue::numbers({0.5, 0.25, 0.13}))
                         .with("chance", es::AttrValue::number(0.125))
                         .with("token_index", es::AttrValue::i64s({0}));
    s.putResult("weight_similarity", w);
    es::Result nested = w;
    nested.kind = "D1";
    s.putResult("output_similarity/r0", nested);
    s.setViewState("similarity", R"({"layer": 1, "matrix": "up", "colour_scale": "global", "selection": [0, 3]})");
    s.setViewState("routing-map", R"({"run": "r0", "zoom": [0.0, 10.5]})");
    s.addNote({"Expert 3 fires on code — ☕ über-interesting", R"({"run": "r0", "layer": 1, "token": 5})", ""});
    s.addNote({"second note", "{}", ""});
    s.setPrompts({"The quick brown fox", "def f(x): return x", "日本語のテキスト"});
}

}  // namespace

int main(int argc, char** argv) {
    try {
        std::vector<std::string> a(argv + 1, argv + argc);
        Opts o;
        std::vector<std::string> pos;
        for (size_t i = 0; i < a.size(); ++i) {
            auto num = [&] { return std::atoll(a.at(++i).c_str()); };
            if (a[i] == "--tokens") o.tokens = num();
            else if (a[i] == "--layers") o.layers = num();
            else if (a[i] == "--experts") o.experts = num();
            else if (a[i] == "--prompts") o.prompts = num();
            else pos.push_back(a[i]);
        }
        if (pos.empty()) {
            std::fprintf(stderr, "see the comment at the top of make_session.cpp\n");
            return 2;
        }
        if (pos[0] == "--copy" && pos.size() == 3) {
            es::Session s = es::Session::open(pos[1]);
            s.save(pos[2]);
            return 0;
        }
        if (pos[0] == "--first-layer" && pos.size() == 2) {
            auto t0 = Clock::now();
            es::Session s = es::Session::open(pos[1]);
            double openS = std::chrono::duration<double>(Clock::now() - t0).count();
            auto names = s.runNames();
            auto info = s.runInfo(names.at(0));
            auto t1 = Clock::now();
            es::LayerTrace l = s.runLayer(names.at(0), info.moeLayers.at(0));
            double layerS = std::chrono::duration<double>(Clock::now() - t1).count();
            rusage ru{};
            getrusage(RUSAGE_SELF, &ru);
            std::printf(
                "{\"open_s\": %.4f, \"first_layer_s\": %.4f, \"open_to_first_layer_s\": %.4f, \"max_rss_mb\": %.1f, "
                "\"values\": %zu}\n",
                openS, layerS, openS + layerS, ru.ru_maxrss / 1024.0, l.routerLogits.size());
            return 0;
        }
        if (pos[0] == "--append" && pos.size() == 3) {
            es::Session s = es::Session::open(pos[1]);
            s.addRun(pos[2], trace(o, 11, false));
            auto t0 = Clock::now();
            s.save(pos[1]);
            std::printf("{\"save_s\": %.4f}\n", std::chrono::duration<double>(Clock::now() - t0).count());
            return 0;
        }
        es::Session s = es::Session::create(model(o));
        const bool full = o.tokens * o.layers * o.experts <= (int64_t(1) << 26);
        s.addRun("r0", trace(o, 7, full));
        addExtras(s, o);
        auto t0 = Clock::now();
        s.save(pos[0]);
        std::printf("{\"save_s\": %.4f}\n", std::chrono::duration<double>(Clock::now() - t0).count());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "make_session: %s\n", e.what());
        return 1;
    }
}
