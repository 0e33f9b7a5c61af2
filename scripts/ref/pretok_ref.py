#!/usr/bin/env python3
"""Reference splits for every byte-level BPE pre-tokenizer llama.cpp (June 2025) knows:
tests/fixtures/tokenizer_pretok_all.json, read by tests/model/test_tokenizer_pretok.c.

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install unicodedata2==15.1.0
    /tmp/refvenv/bin/python scripts/ref/pretok_ref.py [INP_FILE]

INP_FILE (default ../shared/data/tokenizer/ggml-vocab-gpt-2.gguf.inp) adds llama.cpp's tokenizer
test strings to the edge cases below.

This is a second, independent implementation of llama.cpp's unicode_regex_split: the same
regular expressions (the tokenizers' own, as llama-vocab.cpp lists them per pre-tokenizer type),
run by Python's backtracking `re` engine (ordered alternation and greedy quantifiers, as
ECMAScript's std::regex) instead of tailor's hand-written matchers. llama.cpp's regex rules are
followed, not the Unicode-exact ones of the models' own tokenizers:
 - each regex splits every piece the previous one left: its matches and the unmatched text
   between them both become pieces (std::regex_iterator over each piece; lookaheads stop at the
   piece's end);
 - a regex that uses \\p{..} runs over a "collapsed" text: ASCII stays as it is, any other
   codepoint becomes one stand-in byte per class (whitespace 0x0B; letter, number, punctuation,
   mark, symbol; anything else 0xD0), and \\p{X} becomes [<stand-in><ASCII members>], where
   llama.cpp's ASCII list for \\p{S} lacks '~';
 - the other regexes run over the codepoints with non-ASCII whitespace replaced by 0x0B;
 - \\s, \\d are ASCII-only (the C locale; non-ASCII whitespace arrives as 0x0B).
Zero-length matches (SuperBPE's digit-group lookahead) leave empty pieces, which make no tokens;
they are dropped here and in tailor.

Each type lists the tokenizer.ggml.pre names llama.cpp maps to it; the fixture stores the texts
once and, per type, every text's pieces as lengths in codepoints.
"""
import json
import os
import re
import sys

try:
    import unicodedata2 as ud
except ImportError:
    sys.exit("pip install unicodedata2==15.1.0 (llama.cpp's Unicode tables are 15.1)")

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
CONTR = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3 = CONTR + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = CONTR + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
BLOOM = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
DEEPSEEK_LLM_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
    "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf"
    "\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d"
    "\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4"
    "\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
    "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943")
LETTER_CASE = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
LETTER_CASE2 = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"

# (names, regexes) per llama.cpp pre-tokenizer type
TYPES = [
    (["default"], [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"]),
    (["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"], [LLAMA3]),
    (["dbrx"], [LLAMA3]),
    (["smaug-bpe"], [LLAMA3]),
    (["chatglm-bpe", "glm4"], [LLAMA3]),
    (["deepseek-llm"], ["[\r\n]", "\\s?[" + DEEPSEEK_LLM_LETTERS + "]+",
                        "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+", "\\s+$", CJK, r"\p{N}+"]),
    (["deepseek-v3"], [r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                       r"[!" + '"' + r"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                       r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"]),
    (["deepseek-coder"], ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK, r"\p{N}"]),
    (["falcon"], [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"]),
    (["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"], [r"\p{N}", GPT2]),
    (["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code",
      "roberta-bpe", "mpt", "olmo", "jais", "trillion"], [GPT2]),
    (["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"], [QWEN2]),
    (["poro-chat", "bloom", "gpt3-finnish"], [BLOOM]),
    (["viking"], [BLOOM, r"\p{N}"]),
    (["tekken"], [LETTER_CASE + "|" + LETTER_CASE2 + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"]),
    (["chameleon"], ["<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\t\n]|    |  )", r"\p{N}",
                     r"[\p{P}!-/:-@\[-`{-~]", GPT2]),
    (["gpt-4o", "llama4"], [LETTER_CASE + CONTR + "?|" + LETTER_CASE2 + CONTR + r"?|\p{N}{1,3}"
                            r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"]),
    (["superbpe"], [r"\p{N}+", r"(?=(\d{3})+(?!\d))"]),
    (["bailingmoe"], [r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                      r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"]),
    (["seed-coder"], [CONTR + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"]),
]

# stand-in bytes and ASCII members of each \p class (llama.cpp's unicode_regex_split)
UCAT = {"N": ("\xd1", "0-9"), "L": ("\xd2", "A-Za-z"), "P": ("\xd3", r"!-#%-*,-/:-;?-@\[-\]_\{\}"),
        "M": ("\xd4", ""), "S": ("\xd5", r"\$\+<->\^`\|")}
WHITESPACE = set(range(0x09, 0x0E)) | set(range(0x2000, 0x200B)) | {
    0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000}


def collapse_text(text):
    out = []
    for ch in text:
        cp = ord(ch)
        if cp < 128:
            out.append(ch)
        elif cp in WHITESPACE:
            out.append("\x0b")
        else:
            cat = ud.category(ch)[0]
            out.append(UCAT[cat][0] if cat in UCAT else "\xd0")
    return "".join(out)


def collapse_regex(rx):
    out, inside, i = [], False, 0
    while i < len(rx):
        c = rx[i]
        if c == "[" and (i == 0 or rx[i - 1] != "\\"):
            inside = True
        elif c == "]" and inside and rx[i - 1] != "\\":
            inside = False
        m = re.match(r"\\p\{([NLPMS])\}", rx[i:])
        if m:
            stand_in, members = UCAT[m.group(1)]
            body = stand_in + members
            out.append(body if inside else "[" + body + "]")
            i += 5
            continue
        out.append(c)
        i += 1
    return "".join(out)


def split(text, regexes):
    pieces = [text] if text else []
    wide = "".join("\x0b" if ord(c) > 127 and ord(c) in WHITESPACE else c for c in text)
    collapsed = collapse_text(text)
    for rx in regexes:
        use_collapsed = "\\p{" in rx
        if use_collapsed:
            assert all(ord(c) < 128 for c in rx), rx
            pat, src = collapse_regex(rx), collapsed
        else:
            pat, src = rx, wide
        if pat.endswith("$") and not pat.endswith("\\$"):
            pat = pat[:-1] + r"\Z"  # ECMAScript '$' (no multiline): only the end of the piece
        cre = re.compile(pat, re.ASCII)
        out, start = [], 0
        for p in pieces:
            s = src[start:start + len(p)]
            prev = 0
            for m in cre.finditer(s):
                if m.start() > prev:
                    out.append(p[prev:m.start()])
                out.append(p[m.start():m.end()])
                prev = m.end()
            if prev < len(p):
                out.append(p[prev:])
            start += len(p)
        pieces = [p for p in out if p]
    return pieces


EDGE = [
    "Hello world", " Hello World!", "  two leading spaces", "trailing spaces   ", "a  b   c    d",
    "\t tab and space", "line one\nline two\n\nline four\n\n\n", "windows\r\nline\r\nends", "x!!\n\ny", "!\n/ a/\n",
    "1234567890", "12 123 1234 123456 1234567", "3.14159 2.71828 1,000,000 -42 +7 1e-9",
    "\u0661\u0662\u0663\u0664 \u00bd\u00bd\u00bd x\u00b2 \u2460\u2461", "In 2024, 85% of 1200 users paid $9.99.",
    "I'm sure you're right; they'll say it's 'fine' and we'd agree.", "DON'T SHOUT'S 'LL 'Re 'vE 'd 't 'x",
    "'", "a'", " ' ", "''s", "it\u2019s",
    "HTTPServer iPhone McDonald camelCaseWord XMLHttpRequest ABCdef", "\u00c0B a\u00c0b \u00c9COLE \u00e9cole \u00c9cole",
    "\u00c0\u00c9\u00ceabc\u00e9DEF", "\u0394\u03b5\u03bb\u03c4\u03b1 \u03a3\u03a3\u03c3", "cafe\u0301 na\u00efve",
    "def f(x):\n    return x ** 2  # square\n", "int main(void) {\n\tprintf(\"%d\\n\", 42);\n}",
    '{"key": [1, 2, 3], "b": true}', "https://example.com/path?q=1&x=y#frag", "a/b/c // comment\n/* x */",
    "~~hello ~x 1~2 ~", "$$$ ### x +++ === |||", "<b>bold</b> `code` _em_ ^caret^", "!!!??? ... --- ___",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e",
    "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c\u3002\u30ab\u30bf\u30ab\u30ca\u30fc", "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4",
    "\u0645\u0631\u062d\u0628\u0627\u060c \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u06d4", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e\u0964",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u2026 \u3001\u3002",
    "\uff21\uff22\uff43 \uff11\uff12\uff13 \uff01\uff1f", "\u2018quoted\u2019 \u201cdouble\u201d",
    "emoji \U0001f600\U0001f680 \u2705 \U0001f44d\U0001f3fd", "zwj \U0001f468\u200d\U0001f469\u200d\U0001f467 flag \U0001f1fa\U0001f1f8",
    "\U0001f636\u200d\U0001f32b\ufe0f x\u200by", "math: \u2200x \u2208 \u211d, \u221e \u2248 \u03c0",
    "nbsp\u00a0here ideographic\u3000space line\u2028sep", "\u00a0\u00a0x \u3000y \u2003\u2003z", "nel\x85x",
    "ctrl\x01\x02\x7f chars", "\x1c\x1d\x1e\x1f sep", "    Hello\n    Hello", "\n =", "' era", "  \n  z",
    "foo   ", "   ", "\t\tx", "\u2028\u2029", " .\r\n\r\nz", ".\n", "a\r\n\r\n  b",
    "<sentinel:12>x<sentinel:>IMGIMGABZ IMGIMGABCDEZ IMGIMGZ", "a  b    c     d\t\te\n\nf",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "w048 7tuijk dsdfhu", "", " ", "\n",
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    inp = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "..", "shared", "data", "tokenizer",
                                                             "ggml-vocab-gpt-2.gguf.inp")
    texts = list(EDGE)
    with open(inp, encoding="utf-8") as f:
        for t in f.read().split("\n__ggml_vocab_test__\n"):
            if t not in texts:
                texts.append(t)
    types = []
    for names, regexes in TYPES:
        splits = []
        for t in texts:
            pieces = split(t, regexes)
            assert "".join(pieces) == t
            splits.append([len(p) for p in pieces])
        types.append({"names": names, "regexes": regexes, "splits": splits})
    doc = {"generator": "scripts/ref/pretok_ref.py", "unicode": ud.unidata_version,
           "units": "pieces as lengths in codepoints", "texts": texts, "types": types}
    out = os.path.join(root, "tests", "fixtures", "tokenizer_pretok_all.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=True, indent=None, separators=(",", ":"))
        f.write("\n")
    print("wrote %s: %d types, %d texts" % (out, len(types), len(texts)))


if __name__ == "__main__":
    main()
