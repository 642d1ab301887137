"""Makes tests/fixtures/tokenizer/: a deterministic corpus of varied lines (several scripts, emoji, whitespace runs,
digits, code, empty lines, rare characters for byte fallback), a LLaMA-style BPE model trained on it with spm_train,
and expected ids/decodes for the first lines from sentencepiece. Run: python3 tests/reference/make_tokenizer_fixtures.py
(needs spm_train and the sentencepiece Python module). tests/unit/test_tokenizer.c and
tests/integration/tokenizer_parity.sh consume the output."""
import os
import random
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "tokenizer")

WORDS = {
    "en": "the of and to in is you that it he was for on are as with his they at be this have from or one had by word "
          "but not what all were we when your can said there use an each which she do how their if will up other about "
          "out many then them these so some her would make like him into time has look two more write go see number no "
          "way could people my than first water been call who oil its now find long down day did get come made may part "
          "image picture describe what color where animal person holding standing street table".split(),
    "ru": "и в не на я быть он с что а по это она этот к но они мы как из у который то за свой весь год от так о для ты "
          "же все тот мочь вы человек такой его сказать только или ещё бы себя один как уже до время если сам когда "
          "другой вот говорить наш мой знать стать при чтобы дело жизнь кто первый очень два день её новый рука".split(),
    "el": "και το η της του να ο σε με για τα που δεν από τις θα είναι των στο στην οι ένα μια ότι αλλά πολύ έχει "
          "εικόνα άνθρωπος σπίτι ημέρα νερό".split(),
    "ar": "في من على أن إلى عن مع هذا التي الذي كان هذه ما لا كل بين قد ذلك لم بعد عند أو هو هي الصورة رجل امرأة "
          "بيت ماء يوم".split(),
    "hi": "के है में की और से को का एक पर यह था कि हैं भी नहीं तो लिए ही गया कर जो हो रहा वह तस्वीर आदमी घर पानी "
          "दिन".split(),
    "zh": list("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天"
               "而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长图片猫狗红色"),
    "ja": list("あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコ"),
    "ko": "이 그 저 것 수 등 들 및 사진 고양이 개 사람 집 물 날".split(),
}
EMOJI = ["😀", "😂", "🥲", "👍", "🎉", "🐱", "🐶", "🚀", "❤️", "👨‍👩‍👧", "🇫🇷", "🏳️‍🌈", "✨", "🔥", "🙏🏽"]
RARE = ["𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𓀀", "𐍈", "ꙮ", "ᚠᛇᚻ", "☃", "⅋", "℘", "﷽", "ℵ", "∮", "⁂", "\u00ad", "\u200b", "\ufeff", "\u2028",
        "ǅ", "ﬁ", "Å", "Å", "é", "é", "①", "½", "Ⅻ", "ｆｕｌｌ", "\u0301", "𝟘𝟙", "🂡", "\U0010fffd", "\ue000"]
CODE = ["for (int i = 0; i < n; i++) {", "    return x->next;", "def f(x):\n", "if a == b and c != d:",
        "print(\"hello, world\")", "#include <stdio.h>", "x = [1, 2, 3]  # comment", "SELECT * FROM t WHERE id = 42;",
        "let y = a.map(|v| v * 2).collect::<Vec<_>>();", "}", "\t\tindent();", "std::vector<int> v{1,2,3};",
        "$ ls -la /usr/bin | grep spm", "<a href=\"x\">link</a>", "{\"key\": [true, null, 3.14]}", "a+b*c/d-e%f^g"]
USER = ["<image>", "<sep>", "[INST]"]
PUNCT = list(".,;:!?-()[]{}'\"/\\@#$%^&*_+=~`|<>") + ["...", "—", "–", "«", "»", "„", "“", "”", "¿", "¡", "、", "。", "，"]


def number(r):
    k = r.random()
    if k < 0.3:
        return str(r.randint(0, 9))
    if k < 0.6:
        return str(r.randint(0, 10 ** r.randint(1, 12)))
    if k < 0.8:
        return f"{r.uniform(-1000, 1000):.{r.randint(1, 5)}f}"
    return f"{r.randint(1, 12):02d}/{r.randint(1, 28):02d}/{r.randint(1900, 2100)}"


def space(r):
    k = r.random()
    if k < 0.85:
        return " "
    if k < 0.92:
        return " " * r.randint(2, 6)
    if k < 0.96:
        return "\t" * r.randint(1, 2)
    return r.choice([" \t ", "\u3000", "\u00a0", "  \t"])


def token(r, lang):
    k = r.random()
    if k < 0.62:
        w = r.choice(WORDS[lang])
        if lang in ("zh", "ja"):
            w = "".join(r.choice(WORDS[lang]) for _ in range(r.randint(1, 6)))
        if r.random() < 0.1:
            w = w.capitalize()
        if r.random() < 0.02:
            w = w.upper()
        return w
    if k < 0.72:
        return number(r)
    if k < 0.82:
        return r.choice(PUNCT)
    if k < 0.87:
        return r.choice(EMOJI)
    if k < 0.91:
        return r.choice(RARE)
    if k < 0.94:
        return r.choice(USER)
    if k < 0.97:
        return r.choice(CODE).replace("\n", " ")
    return chr(r.choice([r.randint(0x4E00, 0x9FFF), r.randint(0x0400, 0x04FF), r.randint(0x1F300, 0x1FAFF),
                         r.randint(0xAC00, 0xD7A3), r.randint(0x0900, 0x097F), r.randint(0x10000, 0x1FFFF)]))


def line(r):
    k = r.random()
    if k < 0.03:
        return ""
    if k < 0.05:
        return space(r) * r.randint(1, 4)
    if k < 0.08:
        return r.choice(CODE).replace("\n", "")
    langs = list(WORDS)
    lang = r.choices(langs, weights=[10, 3, 2, 2, 2, 3, 1, 1])[0]
    n = r.randint(1, 24 if r.random() < 0.92 else 100)
    parts = []
    if r.random() < 0.08:
        parts.append(space(r))
    for i in range(n):
        if r.random() < 0.05:
            lang = r.choice(langs)
        parts.append(token(r, lang))
        if i + 1 < n:
            glue = r.random()
            parts.append("" if glue < 0.12 else space(r))
    if r.random() < 0.08:
        parts.append(space(r))
    s = "".join(parts)
    return s.replace("\r", "").replace("\n", " ").replace("\u2028", " ")


def main():
    if "--unused-only" in sys.argv:  # keep the committed model, remake only the UNUSED-piece variant
        with open(os.path.join(OUT, "lines.txt"), encoding="utf-8") as f:
            make_unused_variant(os.path.join(OUT, "tokenizer.model"), [l.rstrip("\n") for l in f])
        return
    os.makedirs(OUT, exist_ok=True)
    r = random.Random(20261122)
    lines = [line(r) for _ in range(12000)]
    corpus = os.path.join(OUT, "lines.txt")
    with open(corpus, "w", encoding="utf-8", newline="\n") as f:
        for s in lines:
            f.write(s + "\n")
    # Training text: the same lines (minus rare-char lines so byte fallback is exercised on them).
    train = os.path.join("/tmp", "tok_train.txt")
    with open(train, "w", encoding="utf-8") as f:
        for s in lines:
            if not any(c in s for c in RARE[:6]):
                f.write(s + "\n")
    prefix = os.path.join(OUT, "tokenizer")
    subprocess.run(["spm_train", f"--input={train}", f"--model_prefix={prefix}", "--model_type=bpe",
                    "--vocab_size=3000", "--byte_fallback=true", "--split_digits=true",
                    "--normalization_rule_name=identity", "--add_dummy_prefix=true",
                    "--remove_extra_whitespaces=false", "--allow_whitespace_only_pieces=true",
                    "--user_defined_symbols=<image>,<sep>,[INST]", "--character_coverage=0.99",
                    "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1", "--num_threads=1",
                    "--max_sentence_length=100000", "--input_sentence_size=0", "--shuffle_input_sentence=false",
                    "--minloglevel=1"], check=True)
    os.remove(prefix + ".vocab")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    with open(os.path.join(OUT, "expected_ids.txt"), "w", encoding="utf-8") as f:
        for s in lines[:400]:
            f.write(" ".join(str(i) for i in sp.encode(s)) + "\n")
    print("lines", len(lines), "vocab", sp.get_piece_size(), file=sys.stderr)
    make_unused_variant(prefix + ".model", lines)


def pb_piece(piece, score, type_):
    """A serialized ModelProto field 1 (SentencePiece {piece, score, type})."""
    import struct
    body = piece.encode("utf-8")
    msg = bytes([0x0a, len(body)]) + body + b"\x15" + struct.pack("<f", score) + bytes([0x18, type_])
    return bytes([0x0a, len(msg)]) + msg


def make_unused_variant(model_file, lines):
    """tokenizer_unused.model: the model plus UNUSED pieces that BPE merges first and sentencepiece then splits
    back (bpe_model.cc rev_merge), and expected ids for it."""
    import collections
    import sentencepiece as spm
    proto = open(model_file, "rb").read()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    pairs = collections.Counter()
    for s in lines[:3000]:
        p = sp.encode(s, out_type=str)
        pairs.update(a + b for a, b in zip(p, p[1:]) if len(a + b) <= 8)
    extra = b""
    added = 0
    for piece, _ in pairs.most_common():
        if sp.piece_to_id(piece) != sp.unk_id() or "<" in piece:
            continue
        extra += pb_piece(piece, 0.5 - 0.01 * added, 5)
        added += 1
        if added == 40:
            break
    out = os.path.join(OUT, "tokenizer_unused.model")
    with open(out, "wb") as f:
        f.write(proto + extra)
    sp2 = spm.SentencePieceProcessor(model_file=out)
    with open(os.path.join(OUT, "expected_unused_ids.txt"), "w", encoding="utf-8") as f:
        for s in lines[:2000]:
            f.write(" ".join(str(i) for i in sp2.encode(s)) + "\n")


if __name__ == "__main__":
    main()
