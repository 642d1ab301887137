"""Makes tests/fixtures/tokenizer/templates.json: input_ids/labels of >= 200 conversations under LLaVA's plain,
vicuna_v1 and llava_v0 templates, computed (1) by LLaVA's own preprocessing (llava/train/train.py preprocess_plain,
preprocess_v1, preprocess; llava/mm_utils.py tokenizer_image_token; llava/conversation.py get_prompt), transcribed
here with torch tensors replaced by lists, on transformers 4.37.2's slow LlamaTokenizer with legacy=True (as LLaVA
loads it: AutoTokenizer(use_fast=False)), and (2) segment by segment as common/conversation.c does.
The installed transformers 5.x no longer has the sentencepiece-backed slow tokenizer, so (1) uses
`LegacyLlamaTokenizer` below: 4.37.2's PreTrainedTokenizer.tokenize (split on the added tokens <unk> <s> </s>, which
LLaMA declares without lstrip/rstrip) + LlamaTokenizer._tokenize (legacy: sp_model.encode of each piece) +
build_inputs_with_special_tokens (BOS). Run: python3 tests/reference/make_template_fixtures.py
Consumed by tests/unit/test_templates.c; also used by bench/bench_tokenize.py."""
import copy
import json
import os
import random
import sys

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "tokenizer")
MODEL = os.path.join(FIX, "tokenizer.model")

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
MODEL_MAX_LENGTH = 2048


class LegacyLlamaTokenizer:
    """transformers 4.37.2 LlamaTokenizer(legacy=True, add_bos_token=True, add_eos_token=False) encode path."""

    def __init__(self, model_file):
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self.bos_token_id = self.sp.bos_id()
        self.unk_token_id = self.sp.unk_id()
        self.pad_token_id = self.unk_token_id  # train.py: tokenizer.pad_token = tokenizer.unk_token
        self.legacy = True
        self.model_max_length = MODEL_MAX_LENGTH
        self.added = {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size())
                      if self.sp.is_control(i) or self.sp.is_unknown(i)}

    def split_added(self, text):
        """Trie.split: cut at each added token, leftmost first, longest at a position."""
        out, start, i = [], 0, 0
        while i < len(text):
            best = None
            for tok in self.added:
                if text.startswith(tok, i) and (best is None or len(tok) > len(best)):
                    best = tok
            if best is None:
                i += 1
                continue
            out.append(text[start:i])
            out.append(best)
            i += len(best)
            start = i
        out.append(text[start:])
        return [t for t in out if t]

    def tokenize_ids(self, text):
        ids = []
        for piece in self.split_added(text):
            if piece in self.added:
                ids.append(self.added[piece])
            else:
                ids.extend(self.sp.encode(piece))
        return ids

    def __call__(self, text, truncation=False):
        ids = [self.bos_token_id] + self.tokenize_ids(text)
        if truncation:
            ids = ids[:self.model_max_length]
        return {"input_ids": ids}


# ---- LLaVA reference (llava/conversation.py, llava/mm_utils.py, llava/train/train.py) ----

V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
             "The assistant gives helpful, detailed, and polite answers to the user's questions.")
V0_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
             "The assistant gives helpful, detailed, and polite answers to the human's questions.")


def get_prompt_two(system, messages, sep=" ", sep2="</s>"):
    seps = [sep, sep2]
    ret = system + seps[0]
    for i, (role, message) in enumerate(messages):
        if message:
            ret += role + ": " + message + seps[i % 2]
        else:
            ret += role + ":"
    return ret


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX):
    prompt_chunks = [tokenizer(chunk)["input_ids"] for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


def preprocess_multimodal(sources):
    for source in sources:
        for sentence in source:
            if DEFAULT_IMAGE_TOKEN in sentence["value"]:
                sentence["value"] = sentence["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
                sentence["value"] = DEFAULT_IMAGE_TOKEN + "\n" + sentence["value"]
                sentence["value"] = sentence["value"].strip()
    return sources


def preprocess_plain(sources, tokenizer):
    conversations = []
    for source in sources:
        assert len(source) == 2
        assert DEFAULT_IMAGE_TOKEN in source[0]["value"]
        source[0]["value"] = DEFAULT_IMAGE_TOKEN
        conversation = source[0]["value"] + source[1]["value"] + "\n"
        conversations.append(conversation)
    input_ids = [tokenizer_image_token(prompt, tokenizer) for prompt in conversations]
    targets = copy.deepcopy(input_ids)
    for target, source in zip(targets, sources):
        tokenized_len = len(tokenizer_image_token(source[0]["value"], tokenizer))
        target[:tokenized_len] = [IGNORE_INDEX] * min(tokenized_len, len(target))
    return input_ids[0], targets[0], True


def preprocess_v1(sources, tokenizer, has_image):
    roles = {"human": "USER", "gpt": "ASSISTANT"}
    conv_roles = ("USER", "ASSISTANT")
    conversations = []
    for i, source in enumerate(sources):
        if roles[source[0]["from"]] != conv_roles[0]:
            source = source[1:]
        messages = []
        for j, sentence in enumerate(source):
            role = roles[sentence["from"]]
            assert role == conv_roles[j % 2], f"{i}"
            messages.append([role, sentence["value"]])
        conversations.append(get_prompt_two(V1_SYSTEM, messages))
    if has_image:
        input_ids = [tokenizer_image_token(prompt, tokenizer) for prompt in conversations]
    else:
        input_ids = [tokenizer(c, truncation=True)["input_ids"] for c in conversations]
    targets = copy.deepcopy(input_ids)
    sep = " " + conv_roles[1] + ": "
    ok = True
    for conversation, target in zip(conversations, targets):
        total_len = sum(1 for t in target if t != tokenizer.pad_token_id)
        rounds = conversation.split("</s>")
        cur_len = 1
        target[:cur_len] = [IGNORE_INDEX] * cur_len
        for i, rou in enumerate(rounds):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            parts[0] += sep
            if has_image:
                round_len = len(tokenizer_image_token(rou, tokenizer))
                instruction_len = len(tokenizer_image_token(parts[0], tokenizer)) - 2
            else:
                round_len = len(tokenizer(rou)["input_ids"])
                instruction_len = len(tokenizer(parts[0])["input_ids"]) - 2
            # legacy tokenizer: no `round_len -= 1; instruction_len -= 1`
            lo, hi = cur_len, min(cur_len + instruction_len, len(target))
            if hi > lo:
                target[lo:hi] = [IGNORE_INDEX] * (hi - lo)
            cur_len += round_len
        if cur_len < len(target):
            target[cur_len:] = [IGNORE_INDEX] * (len(target) - cur_len)
        if cur_len < tokenizer.model_max_length:
            if cur_len != total_len:
                target[:] = [IGNORE_INDEX] * len(target)
                ok = False  # "WARNING: tokenization mismatch" in train.py
    return input_ids[0], targets[0], ok


def add_speaker_and_signal(header, source):
    conversation = header
    for sentence in source:
        from_str = sentence["from"]
        if from_str.lower() == "human":
            from_str = "Human"
        elif from_str.lower() == "gpt":
            from_str = "Assistant"
        else:
            from_str = "unknown"
        sentence["value"] = "### " + from_str + ": " + sentence["value"] + "\n"
        conversation += sentence["value"]
    conversation += "### "
    return conversation


def mask_targets(target, tokenized_lens, speakers):
    cur_idx = tokenized_lens[0]
    tokenized_lens = tokenized_lens[1:]
    target[:cur_idx] = [IGNORE_INDEX] * min(cur_idx, len(target))
    for tokenized_len, speaker in zip(tokenized_lens, speakers):
        if speaker == "human":
            lo, hi = cur_idx + 2, min(cur_idx + tokenized_len, len(target))
            if hi > lo:
                target[lo:hi] = [IGNORE_INDEX] * (hi - lo)
        cur_idx += tokenized_len


def preprocess_v0(sources, tokenizer, has_image):
    conversations = []
    header = f"{V0_SYSTEM}\n\n"
    for source in sources:
        conversations.append(add_speaker_and_signal(header, source))
    if has_image:
        input_ids = [tokenizer_image_token(p, tokenizer) for p in conversations]
    else:
        input_ids = [tokenizer(c, truncation=True)["input_ids"] for c in conversations]
    targets = copy.deepcopy(input_ids)
    for target, source in zip(targets, sources):
        if has_image:
            lens = [len(tokenizer_image_token(p, tokenizer)) for p in [header] + [s["value"] for s in source]]
        else:
            lens = [len(tokenizer(p, truncation=True)["input_ids"]) for p in [header] + [s["value"] for s in source]]
        mask_targets(target, lens, [s["from"] for s in source])
    return input_ids[0], targets[0], True


def reference(template, record, tokenizer):
    has_image = "image" in record
    sources = [copy.deepcopy(record["conversations"])]
    if has_image:
        sources = preprocess_multimodal(sources)
    if template == "plain":
        return preprocess_plain(sources, tokenizer)
    if template == "vicuna_v1":
        return preprocess_v1(sources, tokenizer, has_image)
    return preprocess_v0(sources, tokenizer, has_image)


# ---- segment by segment, as common/conversation.c ----

class Segmenter:
    def __init__(self, model_file):
        proto = open(model_file, "rb").read()
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        # normalizer_spec { add_dummy_prefix: false } merged into the model: encoding that continues a chunk
        self.sp_cont = spm.SentencePieceProcessor(model_proto=proto + b"\x1a\x02\x18\x00")
        self.specials = {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size())
                         if self.sp.is_control(i) or self.sp.is_unknown(i)}

    def build(self, template, record):
        has_image = "image" in record
        texts = [t["value"] for t in record["conversations"]]
        roles = [t["from"] for t in record["conversations"]]
        if has_image:
            texts = [(DEFAULT_IMAGE_TOKEN + "\n" + t.replace(DEFAULT_IMAGE_TOKEN, "").strip()).strip()
                     if DEFAULT_IMAGE_TOKEN in t else t for t in texts]
        self.ids, self.labels, self.chunk_start, self.has_image, self.ntarget, self.nimg = [], [], True, has_image, 0, 0
        self.emit(self.sp.bos_id(), False)
        if template == "plain":
            if len(texts) != 2 or not has_image or DEFAULT_IMAGE_TOKEN not in texts[0]:
                return "plain"
            self.segment(DEFAULT_IMAGE_TOKEN, False)
            self.segment(texts[1] + "\n", True)
        elif template == "vicuna_v1":
            first = 1 if roles[0] != "human" else 0
            for j in range(first, len(texts)):
                if roles[j] != ("human", "gpt")[(j - first) % 2]:
                    return "alternate"
            s = V1_SYSTEM + " "
            for j in range(first, len(texts)):
                if roles[j] == "human":
                    s += ("USER: " + texts[j] + " ") if texts[j] else "USER:"
                    continue
                s += "ASSISTANT:"
                if not texts[j]:
                    continue
                self.segment(s, False)
                self.segment(" " + texts[j] + "</s>", True)
                s = ""
            self.segment(s, False)
        else:
            s = V0_SYSTEM + "\n\n"
            after_gpt = False
            for j in range(len(texts)):
                s += " " if after_gpt else "### "
                if roles[j] == "human":
                    s += "Human: " + texts[j] + "\n"
                    after_gpt = False
                    continue
                s += "Assistant:"
                self.segment(s, False)
                self.segment(" " + texts[j] + "\n###", True)
                s = ""
                after_gpt = True
            s += " " if after_gpt else "### "
            self.segment(s, False)
        if self.ntarget == 0:
            return "no target"
        return None

    def emit(self, i, target):
        self.ids.append(i)
        self.labels.append(i if target else IGNORE_INDEX)
        self.ntarget += 1 if target else 0

    def text(self, s, target):
        if not s:
            return
        for i in (self.sp if self.chunk_start else self.sp_cont).encode(s):
            self.emit(i, target)
        self.chunk_start = False

    def segment(self, s, target):
        chunk, i = 0, 0
        while i < len(s):
            hit = None
            if self.has_image and s.startswith(DEFAULT_IMAGE_TOKEN, i):
                hit = DEFAULT_IMAGE_TOKEN
            else:
                for tok in self.specials:
                    if s.startswith(tok, i) and (hit is None or len(tok) > len(hit)):
                        hit = tok
            if hit is None:
                i += 1
                continue
            self.text(s[chunk:i], target)
            if hit == DEFAULT_IMAGE_TOKEN:
                self.emit(IMAGE_TOKEN_INDEX, False)
                self.nimg += 1
            else:
                self.emit(self.specials[hit], target)
            self.chunk_start = True
            i += len(hit)
            chunk = i
        self.text(s[chunk:], target)


# ---- conversations ----

def load_lines():
    with open(os.path.join(FIX, "lines.txt"), encoding="utf-8") as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def make_records(r, lines):
    def text(lo=1, hi=2):
        return " ".join(r.choice(lines).strip()[:100] for _ in range(r.randint(lo, hi)))

    recs = []
    # multi-turn image conversations, <image> first or last in the first question
    for k in range(90):
        n = r.randint(1, 5)
        conv = []
        for j in range(n):
            q, a = text(), text(1, 3)
            if j == 0:
                q = (DEFAULT_IMAGE_TOKEN + "\n" + q) if k % 2 == 0 else (q + "\n" + DEFAULT_IMAGE_TOKEN)
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        recs.append({"id": f"img{k}", "image": f"coco/{k:06d}.jpg", "conversations": conv})
    # text-only
    for k in range(40):
        conv = []
        for j in range(r.randint(1, 4)):
            conv += [{"from": "human", "value": text()}, {"from": "gpt", "value": text(1, 2)}]
        recs.append({"id": k, "conversations": conv})
    # long
    for k in range(8):
        conv = [{"from": "human", "value": DEFAULT_IMAGE_TOKEN + "\n" + text(5, 10)},
                {"from": "gpt", "value": text(12, 20)}]
        recs.append({"id": f"long{k}", "image": f"long/{k}.png", "conversations": conv})
    # awkward ones: the reference mis-masks some of these
    odd = [
        [{"from": "gpt", "value": "I start."}, {"from": "human", "value": "<image>\nWhat?"},
         {"from": "gpt", "value": "A cat."}],
        [{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"}],
        [{"from": "human", "value": "  <image>  spaced  \u3000"}, {"from": "gpt", "value": " leading space"}],
        [{"from": "human", "value": "<image>\nsay </s> now"}, {"from": "gpt", "value": "ok </s> done"}],
        [{"from": "human", "value": "<image>\nwhat is <unk>?"}, {"from": "gpt", "value": "<unk> is unknown"}],
        [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": ""}],
        [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "Only an image."}],
        [{"from": "human", "value": "Q with <s> inside <image>"}, {"from": "gpt", "value": "A\n\nwith\tnewlines\n"}],
        [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}, {"from": "human", "value": "<image> again"},
         {"from": "gpt", "value": "B"}],
        [{"from": "human", "value": "<image>\nQ"}, {"from": "human", "value": "Q again"}, {"from": "gpt", "value": "A"}],
        [{"from": "human", "value": "<image>\n日本語の質問"}, {"from": "gpt", "value": "Ответ по-русски 🐱 ١٢٣"}],
        [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "ends with space "}],
    ]
    for k, conv in enumerate(odd):
        recs.append({"id": f"odd{k}", "image": f"odd/{k}.jpg", "conversations": conv})
        recs.append({"id": f"oddtext{k}", "conversations": conv})
    return recs


def make_captions(r, lines):
    recs = []
    for k in range(70):
        q = r.choice(["<image>\nDescribe.", "Render a caption.\n<image>", "<image>"])
        recs.append({"id": f"cap{k}", "image": f"cc/{k}.jpg",
                     "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": r.choice(lines).strip()}]})
    recs.append({"id": "cap_noimage", "conversations": [{"from": "human", "value": "<image>"},
                                                         {"from": "gpt", "value": "x"}]})
    recs.append({"id": "cap_3turns", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]})
    recs.append({"id": "cap_eos", "image": "b.jpg", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a caption </s> with eos"}]})
    return recs


def run_case(template, rec, tokenizer, seg):
    case = {"template": template, "record": rec}
    try:
        ids, labels, ok = reference(template, rec, tokenizer)
        case.update(ref_ids=ids, ref_labels=labels, ref_ok=ok, ref_error=None)
    except (AssertionError, KeyError) as e:
        case.update(ref_ids=None, ref_labels=None, ref_ok=False, ref_error=f"{type(e).__name__}: {e}")
    err = seg.build(template, rec)
    case.update(seg_ids=seg.ids if not err else None, seg_labels=seg.labels if not err else None,
                seg_images=seg.nimg, seg_error=err)
    return case


def main():
    r = random.Random(665)
    lines = load_lines()
    tokenizer = LegacyLlamaTokenizer(MODEL)
    seg = Segmenter(MODEL)
    recs, caps = make_records(r, lines), make_captions(r, lines)
    cases = [run_case("vicuna_v1", rec, tokenizer, seg) for rec in recs]
    cases += [run_case("llava_v0", rec, tokenizer, seg) for rec in recs[::2]]
    cases += [run_case("plain", rec, tokenizer, seg) for rec in caps]
    stats = {}
    for c in cases:
        s = stats.setdefault(c["template"], {"cases": 0, "ref_mismatch": 0, "ids_differ": 0, "labels_differ": 0})
        s["cases"] += 1
        if not c["ref_ok"]:
            s["ref_mismatch"] += 1
        if c["ref_ids"] is not None and c["seg_ids"] is not None:
            s["ids_differ"] += c["ref_ids"] != c["seg_ids"]
            # LLaVA gives image features IGNORE_INDEX labels whatever the label at the placeholder was
            ref = [IGNORE_INDEX if v == IMAGE_TOKEN_INDEX else v for v in c["ref_labels"]]
            s["labels_differ"] += c["ref_ok"] and ref != c["seg_labels"]
    with open(os.path.join(FIX, "templates.json"), "w", encoding="utf-8") as f:
        json.dump({"model": "tokenizer.model", "cases": cases}, f, ensure_ascii=False, separators=(",", ":"))
    print(json.dumps(stats, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
