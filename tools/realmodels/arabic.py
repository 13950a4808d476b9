"""Arabic diacritizers (text2tashkeel, int8 BiLSTMs): same diacritic per letter on sentences written here.

Token ids come from the package's own backends: ``_strip`` and the inlined character map for
``bilstm``, the NFD normalization and ``rawi.vocab.json`` / ``rawi_v2.vocab.json`` for the rawi
family; classes are read as the package reads them (argmax; V3 applies its presence gate; the
stitched ensemble outputs the gated class itself).
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np

from .common import Case, Prepared, import_package, sigmoid

EVAL_SENTENCES = [
    "ذهب الولد إلى المدرسة صباحا",
    "كتب الطالب الدرس في الدفتر",
    "الكتاب على الطاولة بجانب القلم",
    "يحب الناس السفر في فصل الصيف",
    "قرأت المعلمة القصة للأطفال",
    "العلم نور والجهل ظلام",
    "سافر أبي إلى القاهرة أمس",
    "تشرق الشمس من الشرق وتغرب في الغرب",
    "شربت كوبا من الماء البارد",
    "يعمل المهندس في بناء الجسور الكبيرة",
    "المدينة جميلة في الليل",
    "اجتمع الأصدقاء في المقهى بعد العمل",
    "بسم الله الرحمن الرحيم",
    "إن مع العسر يسرا",
    "فتح التاجر متجره مبكرا يوم الخميس",
    "تعلم اللغة العربية ممتع ومفيد",
]
CALIB_SENTENCES = [
    "جلس الرجل تحت الشجرة يقرأ الجريدة",
    "ذهبت الأم إلى السوق لشراء الخضار",
    "كان الجو ممطرا طوال الأسبوع",
    "يلعب الأطفال في الحديقة كل مساء",
    "نجح الطالب في الامتحان بتفوق",
    "الصبر مفتاح الفرج",
    "زار الوفد المتحف الوطني",
    "أكلنا السمك على شاطئ البحر",
]


def _encoder(root: Path, stem: str):
    """text -> (1, L) int64 ids, exactly as the package's backend for *stem* builds them."""
    models = import_package(root, "text2tashkeel", "text2tashkeel._models")
    if stem == "bilstm.int8":
        return lambda text: np.array([[models._BILSTM_C2I.get(c, models._BILSTM_UNK) for c in models._strip(text)]],
                                     dtype=np.int64)
    vocab_file = "rawi.vocab.json" if stem == "rawi.int8" else "rawi_v2.vocab.json"
    vocab = json.loads((root / "src" / "text2tashkeel" / "text2tashkeel" / "models" / vocab_file).read_text("utf-8"))
    c2i = dict(vocab["char_to_idx"])
    unk = c2i.get("<UNK>", 1)

    def encode(text: str) -> np.ndarray:
        bare = "".join(c for c in models._RawiBackend._normalize(text) if unicodedata.category(c) != "Mn")
        return np.array([[c2i.get(c, unk) for c in bare]], dtype=np.int64)
    return encode


def _classes(stem: str):
    def decode(outputs: list[np.ndarray]) -> np.ndarray:
        if stem == "rawi_v3.int8":  # presence gate, then value class (the package's _RawiV3Backend)
            gate = sigmoid(outputs[0][0]) > 0.5
            return np.where(gate, np.asarray(outputs[1][0]).argmax(-1), 0)
        if stem == "rawi_ensemble.int8":  # gated class ids straight from the stitched graph
            return np.asarray(outputs[0][0])
        return np.asarray(outputs[0][0]).argmax(-1)
    return decode


def _prepare(stem: str):
    def prepare(root: Path) -> Prepared:
        encode = _encoder(root, stem)
        name = "input_ids" if stem == "bilstm.int8" else "input"
        feeds = [{name: encode(s)} for s in EVAL_SENTENCES]
        return Prepared(feeds, {name: encode(" ".join(CALIB_SENTENCES))}, _classes(stem), unit="diacritics")
    return prepare


def cases() -> list[Case]:
    return [Case(stem, "text2tashkeel", "same diacritic per letter", _prepare(stem), quantized=True)
            for stem in ("bilstm.int8", "rawi.int8", "rawi_v2.int8", "rawi_v3.int8", "rawi_ensemble.int8")]
