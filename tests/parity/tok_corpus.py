"""A deterministic corpus of test strings for tokenizer parity (>= 2000 strings): many scripts,
emoji and ZWJ sequences, combining marks, code with tabs and runs of spaces and newlines,
numbers of many lengths, empty and whitespace-only strings, and special-token text."""
import random

BASE = [
    "The quick brown fox jumps over the lazy dog.",
    "Mixture-of-Experts models route each token to a few experts.",
    "It's a well-known fact: routers don't choose randomly; they'll specialise, won't they?",
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, Äpfel und Öl.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "我们研究混合专家模型中的路由器如何选择专家。",
    "日本語のテキストも正しく分割されなければならない。カタカナとひらがな、漢字。",
    "هذا نص باللغة العربية لاختبار المحلل.",
    "Ελληνικά: ΣΊΣΥΦΟΣ και σίσυφος, ΟΔΟΣ.",
    "עברית היא שפה שמית.",
    "हिन्दी में एक वाक्य।",
    "한국어 문장도 포함합니다.",
    "Tiếng Việt có dấu: Người đẹp.",
    "emoji 😀😃🎉 and ZWJ 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 flags 🇩🇪🇯🇵 skin 👍🏽",
    "combining: e\u0301 a\u0308 n\u0303 Å vs A\u030a, ﬁ ligature, ① ② ③, ｆｕｌｌｗｉｄｔｈ",
    "def f(x):\n\treturn x**2  # square\n\n\nclass A:\n    pass\n",
    "for (int i = 0; i < n; ++i) {\n        sum += a[i] * b[i];\n    }",
    "    leading spaces and trailing spaces    ",
    "tabs\tand\t\ttabs\n\nnewlines\r\nwindows",
    "numbers 1 12 123 1234 12345 123456 1234567 3.14159 -42 1e-5 0x1F 1,000,000",
    "URL https://example.org/path?q=1&r=2#frag and email a.b@c.de",
    "<s> special tokens in text </s> <unk> [CLS] [SEP] <|endoftext|> <pad>",
    "İstanbul ǅ ΣΑΣ Straße ß ẞ ﬀ",
    "\u200b zero width \u200d joiner \ufeff bom \u00a0 nbsp \u3000 ideographic space",
    "chat: <|im_start|>user\nhi<|im_end|> <|word|> word<|word|> <mask> x [RS]  y hello world",
    "Mixed: English, Deutsch, русский, 中文, 日本語, العربية, 😀 — all in one line!",
]

PIECES = ["  ", "   ", "\t", "\n", "\n\n", " \n ", "!!", "...", "—", "’", "«", "»", "¿", "¡", "(", ")", "[", "]",
          "{", "}", "<", ">", "<s>", "</s>", "[SEP]", "<|endoftext|>", "'s", "'ll", "'VE", "\u0301", "🙂", "👩‍🔬",
          "0", "7", "42", "2024", "99999999", "3.5", "½", "²", "٣", "٤٥", "〇",
          # added tokens of the test tokenizers (single_word, lstrip, rstrip, normalized ones)
          "<|word|>", "a<|word|>b", " <|word|> ", "[RS]", "[RS]   x", "<mask>", "  <mask>", " hello world",
          "Hello World", "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "[MASK]", "[CLS]"]


def corpus(n=2100, seed=1234):
    rng = random.Random(seed)
    out = ["", " ", "  ", "\n", "\t", " \t\n ", "a", "A", "0", "<s>", "</s>", "😀", "é", "e\u0301"]
    out += BASE
    words = [w for s in BASE for w in s.replace("\n", " ").split(" ") if w]
    seen = set(out)
    out = list(dict.fromkeys(out))
    while len(out) < n:
        before = len(out)
        kind = rng.randrange(6)
        if kind == 0:  # a sentence cut at random character positions
            s = rng.choice(BASE)
            a = rng.randrange(len(s) + 1)
            b = rng.randrange(a, len(s) + 1)
            out.append(s[a:b])
        elif kind == 1:  # random words with random separators
            k = rng.randrange(1, 12)
            out.append("".join(rng.choice(words) + rng.choice([" ", " ", " ", "  ", "\n", "\t", "", ", "])
                               for _ in range(k)))
        elif kind == 2:  # pieces
            out.append("".join(rng.choice(PIECES + words) for _ in range(rng.randrange(1, 8))))
        elif kind == 3:  # numbers of many lengths
            out.append(" ".join(str(rng.randrange(10 ** rng.randrange(1, 16))) for _ in range(rng.randrange(1, 5))))
        elif kind == 4:  # two sentences joined
            out.append(rng.choice(BASE) + rng.choice([" ", "\n", "", "  "]) + rng.choice(BASE))
        else:  # case and whitespace variations
            s = rng.choice(BASE)
            s = s.upper() if rng.random() < 0.3 else s.lower() if rng.random() < 0.5 else s
            out.append(rng.choice(["", " ", "  ", "\n"]) + s + rng.choice(["", " ", "\n", "   "]))
        if len(out) > before and out[-1] in seen:
            out.pop()
        else:
            seen.add(out[-1])
    return out
