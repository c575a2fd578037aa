#include <QCryptographicHash>
#include <QFile>
#include <QRandomGenerator>
#include <QTemporaryDir>
#include <QtEndian>
#include <QtTest>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "analysis/similarity.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/sha256.h"
#include "error.h"
#include "jsonfile.h"
#include "model/spec.h"
#include "tiny_checkpoint.h"

using namespace es;

class TestCheckpoint : public QObject {
    Q_OBJECT
private Q_SLOTS:
    void opensAndViewsAreZeroCopy() {
        QTemporaryDir dir;
        test::TinyMixtral m;
        m.write(dir.path().toStdString());
        auto ck = Checkpoint::open(dir.path().toStdString());
        QCOMPARE(ck->tensors().size(), m.tensors.size());
        const TensorView& t = ck->get("model.layers.1.block_sparse_moe.experts.3.w2.weight");
        QCOMPARE(t.dtype, DType::F32);
        QCOMPARE(t.shape, (std::vector<int64_t>{m.hidden, m.ffn}));
        // the view points into the file's bytes: read the same span with QFile
        QFile f(dir.filePath("model.safetensors"));
        QVERIFY(f.open(QIODevice::ReadOnly));
        f.seek(static_cast<qint64>(t.fileOffset));
        QByteArray bytes = f.read(static_cast<qint64>(t.nbytes));
        QCOMPARE(std::memcmp(bytes.constData(), t.data, t.nbytes), 0);
        auto vals = toDoubles(t);
        const auto& expect = m.tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"].values;
        for (size_t i = 0; i < vals.size(); ++i) QCOMPARE(vals[i], static_cast<double>(expect[i]));
        ModelSpec s = ModelSpec::fromCheckpoint(*ck);
        QCOMPARE(s.moeLayers(), (std::vector<int>{0, 1}));
        QCOMPARE(QString::fromStdString(s.dtype), QString("mixed"));
    }

    void mxfp4DecodingFollowsTheOcpDefinition() {
        // Every byte under every scale byte (16 blocks per scale: the 256 byte values), bit for bit
        // against the OCP MX definition computed here from the code's bits with std::ldexp: E2M1
        // (sign, 2 exponent bits with bias 1, 1 mantissa bit; exponent 0 subnormal) times
        // 2^(scale - 127). Scale 255 pins the documented ldexp(value, 128).
        const int groups = 256 * 16;
        std::vector<uint8_t> blocks(static_cast<size_t>(groups) * 16), scales(static_cast<size_t>(groups));
        for (int g = 0; g < groups; ++g) {
            scales[static_cast<size_t>(g)] = static_cast<uint8_t>(g / 16);
            for (int b = 0; b < 16; ++b)
                blocks[static_cast<size_t>(g * 16 + b)] = static_cast<uint8_t>((g % 16) * 16 + b);
        }
        std::vector<float> out(static_cast<size_t>(groups) * 32);
        mxfp4Row(blocks.data(), scales.data(), groups, out.data());
        auto e2m1 = [](int c) {
            const int e = (c >> 1) & 3, m = c & 1;
            const float mag =
                e == 0 ? 0.5f * static_cast<float>(m) : std::ldexp(1.0f + 0.5f * static_cast<float>(m), e - 1);
            return (c & 8) ? -mag : mag;
        };
        for (int g = 0; g < groups; ++g)
            for (int k = 0; k < 32; ++k) {
                const uint8_t byte = blocks[static_cast<size_t>(g * 16 + k / 2)];
                const float want = std::ldexp(e2m1(k % 2 ? byte >> 4 : byte & 15), g / 16 - 127);
                const float got = out[static_cast<size_t>(g * 32 + k)];
                QVERIFY2(std::memcmp(&want, &got, 4) == 0, qPrintable(QString("scale %1, byte %2, value %3: %4, not %5")
                                                                          .arg(g / 16)
                                                                          .arg(byte)
                                                                          .arg(k)
                                                                          .arg(got)
                                                                          .arg(want)));
            }
    }

    void halfAndBfloatConversionAgreeWithQt() {
        // F16 decoding checked against Qt's qfloat16, an implementation we did not write.
        std::vector<uint16_t> raw;
        for (uint32_t h = 0; h < 65536; h += 7) raw.push_back(static_cast<uint16_t>(h));
        TensorView v;
        v.dtype = DType::F16;
        v.shape = {static_cast<int64_t>(raw.size())};
        v.data = reinterpret_cast<const uint8_t*>(raw.data());
        v.nbytes = raw.size() * 2;
        auto d = toDoubles(v);
        for (size_t i = 0; i < raw.size(); ++i) {
            qfloat16 q;
            std::memcpy(static_cast<void*>(&q), &raw[i], 2);  // qfloat16 is 2 bytes of IEEE half
            double e = static_cast<double>(static_cast<float>(q));
            if (std::isnan(e)) QVERIFY(std::isnan(d[i]));
            else QCOMPARE(d[i], e);
        }
    }

    void rowCosineIsSymmetricWithUnitDiagonal() {
        std::vector<double> m = {1, 0, 0, 1, 1, 0, -1, 0, 0};
        auto c = rowCosine(m, 3, 3);
        QCOMPARE(c[0], 1.0);
        QCOMPARE(c[1], std::sqrt(0.5));
        QCOMPARE(c[1], c[3]);
        QCOMPARE(c[2], -1.0);
    }

    // SHA-256 against Qt's (QCryptographicHash), with and without the CPU's SHA extensions: every
    // length from 0 to 300 bytes (the padding's two cases and whole blocks), longer inputs of
    // odd lengths, each split into random chunks (a chunk ending inside a block, whole blocks
    // taken straight from the input), and the FIPS 180-2 example "abc".
    void sha256AgreesWithQt() {
        qInfo("SHA extensions on this CPU: %s", sha256HasHardware() ? "yes" : "no");
        QRandomGenerator rng(7);
        auto check = [&](const QByteArray& data) {
            const std::string want = QCryptographicHash::hash(data, QCryptographicHash::Sha256).toHex().toStdString();
            const auto* p = reinterpret_cast<const uint8_t*>(data.constData());
            std::vector<std::pair<const uint8_t*, size_t>> chunks;
            for (size_t at = 0; at < static_cast<size_t>(data.size());) {
                const size_t take = std::min<size_t>(data.size() - at, rng.bounded(1, 200));
                chunks.emplace_back(p + at, take);
                at += take;
            }
            const std::vector<std::pair<const uint8_t*, size_t>> whole = {{p, static_cast<size_t>(data.size())}};
            for (bool hw : {true, false}) {
                QCOMPARE(sha256Hex(whole, hw), want);
                QCOMPARE(sha256Hex(chunks, hw), want);
            }
        };
        for (int n = 0; n <= 300; ++n) {
            QByteArray d(n, '\0');
            for (char& c : d) c = static_cast<char>(rng.bounded(256));
            check(d);
        }
        for (int n : {1000, 4095, 65537, 1 << 20}) {
            QByteArray d(n, '\0');
            for (char& c : d) c = static_cast<char>(rng.bounded(256));
            check(d);
        }
        const std::string abc = "abc";
        QCOMPARE(sha256Hex({{reinterpret_cast<const uint8_t*>(abc.data()), abc.size()}}),
                 std::string("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    }

    void fingerprintFollowsContentNotPlace() {
        QTemporaryDir a, b;
        test::TinyMixtral m;
        m.write(a.path().toStdString());
        m.write(b.path().toStdString());
        const std::string fa = Checkpoint::open(a.path().toStdString())->fingerprint();
        QCOMPARE(Checkpoint::open(b.path().toStdString())->fingerprint(), fa);
        // the embedding is 128 KiB: its first and last 64 KiB are sampled, so a change in the
        // last value shows; the sample is what keeps the fingerprint cheap on 100 GB checkpoints.
        auto& emb = m.tensors["model.embed_tokens.weight"].values;
        emb.back() += 1.0f;
        test::writeSafetensors(b.filePath("model.safetensors").toStdString(), m.tensors);
        QVERIFY(Checkpoint::open(b.path().toStdString())->fingerprint() != fa);
    }

    // A document's parsed size is bounded while it is read: 20,000 empty lists (60 KB of text) are
    // estimated at 1.9 MB once parsed (about 1.1 MB measured); under a 1 MiB budget they are
    // refused, naming the file and the element reached, before they are held.
    void jsonParsedSizeIsBounded() {
        std::string text = "[";
        for (int i = 0; i < 20000; ++i) text += i ? ",[]" : "[]";
        text += "]";
        QCOMPARE(parseJson(text, "doc.json").size(), size_t(20000));
        JsonLimits small;
        small.maxParsedBytes = int64_t(1) << 20;
        try {
            parseJson(text, "doc.json", small);
            QFAIL("expected an error");
        } catch (const Error& e) {
            QCOMPARE(QString::fromStdString(e.file()), QString("doc.json"));
            QVERIFY2(QString::fromStdString(e.message()).contains("too large to hold once parsed"), e.what());
            QVERIFY2(QString::fromStdString(e.field()).startsWith("[10"), e.what());  // 1 MiB / 96 bytes a list
        }
        // keys and strings count their text: one string of 2 MB alone is over the budget
        try {
            parseJson("{\"k\": \"" + std::string(2 << 20, 'x') + "\"}", "doc.json", small);
            QFAIL("expected an error");
        } catch (const Error& e) {
            QCOMPARE(QString::fromStdString(e.field()), QString("k"));
            QVERIFY2(QString::fromStdString(e.message()).contains("too large to hold once parsed"), e.what());
        }
    }

    // Python json's bare Infinity, -Infinity and NaN (transformers writes them into config.json) are
    // read as transformers' own encoding of them, {"__float__": "..."}, where a value starts, and
    // nowhere else: inside strings, keys and words they stay text; strict readers refuse them.
    void pythonFloatTokens() {
        const nlohmann::json j = parseJson(
            "{\"lim\": [0.0, Infinity], \"m\":-Infinity ,\"n\": [NaN], \"s\": \"Infinity, NaN\", "
            "\"Infinity\": \"x\\\" Infinity\", \"w\": [\"NaNo\"]}",
            "config.json");
        QCOMPARE(j["lim"][1], nlohmann::json({{"__float__", "Infinity"}}));
        QCOMPARE(j["lim"][0], nlohmann::json(0.0));
        QCOMPARE(j["m"], nlohmann::json({{"__float__", "-Infinity"}}));
        QCOMPARE(j["n"][0], nlohmann::json({{"__float__", "NaN"}}));
        QCOMPARE(j["s"], nlohmann::json("Infinity, NaN"));
        QCOMPARE(j["Infinity"], nlohmann::json("x\" Infinity"));
        QCOMPARE(j["w"][0], nlohmann::json("NaNo"));
        for (const char* bad : {"[Infinityx]", "[NaN1]", "{\"a\": Inf}"}) {
            try {
                parseJson(bad, "config.json");
                QFAIL(bad);
            } catch (const Error& e) {
                QVERIFY2(QString::fromStdString(e.message()).contains("not valid JSON"), e.what());
            }
        }
        JsonLimits strict;
        strict.pythonFloats = false;
        try {
            parseJson("[Infinity]", "header", strict);
            QFAIL("expected an error");
        } catch (const Error& e) {
            QVERIFY2(QString::fromStdString(e.message()).contains("not valid JSON"), e.what());
        }
    }

    void errorsNameFileAndField() {
        QTemporaryDir dir;
        test::TinyMixtral m;
        m.write(dir.path().toStdString());
        m.tensors["model.norm.weight"].dtype = "F32";
        m.tensors["model.norm.weight"].shape = {m.hidden + 1};
        m.tensors["model.norm.weight"].values.push_back(0.f);
        test::writeSafetensors(dir.filePath("model.safetensors").toStdString(), m.tensors);
        auto ck = Checkpoint::open(dir.path().toStdString());
        try {
            ModelSpec::fromCheckpoint(*ck);
            QFAIL("expected an error");
        } catch (const Error& e) {
            QCOMPARE(QString::fromStdString(e.field()), QString("model.norm.weight"));
            QVERIFY(QString::fromStdString(e.file()).endsWith("model.safetensors"));
        }
        try {
            Checkpoint::open(dir.filePath("nope").toStdString());
            QFAIL("expected an error");
        } catch (const Error& e) {
            QVERIFY(QString::fromStdString(e.file()).endsWith("nope"));
        }
    }
};

QTEST_APPLESS_MAIN(TestCheckpoint)
#include "test_checkpoint.moc"
