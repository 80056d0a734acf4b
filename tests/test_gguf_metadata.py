"""models/gguf_metadata.py against gguf-py's own reader, on a file holding every GGUF value type."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from models.gguf_metadata import read_metadata

pytestmark = pytest.mark.unit


def test_every_value_type_reads_as_gguf_py_reads_it(tmp_path):
    path = tmp_path / "all-types.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_uint8("t.u8", 255)
    writer.add_int8("t.i8", -128)
    writer.add_uint16("t.u16", 65535)
    writer.add_int16("t.i16", -32768)
    writer.add_uint32("t.u32", 2**32 - 1)
    writer.add_int32("t.i32", -(2**31))
    writer.add_float32("t.f32", 0.1)
    writer.add_uint64("t.u64", 2**64 - 1)
    writer.add_int64("t.i64", -(2**63))
    writer.add_float64("t.f64", 0.1)
    writer.add_bool("t.bool", True)
    writer.add_string("t.string", "Ġhello wörld ✓")
    writer.add_array("t.strings", ["", "a", "Ġ✓", "<|im_start|>"])
    writer.add_array("t.ints", [3, -1, 7])
    writer.add_array("t.bools", [True, False, True])
    writer.add_array("t.floats", [0.5, -2.25])
    writer.add_array("t.nested", [[1, 2], [3]])
    writer.add_array("t.empty", [])
    writer.add_tensor("weight", np.arange(8, dtype=np.float32))  # the tensors that follow are not read
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    fields = read_metadata(path)
    # gguf-py flattens an array of arrays into one list; the format keeps them apart
    assert fields.pop("t.nested") == [[1, 2], [3]]
    expected = {key: field.contents() for key, field in gguf.GGUFReader(str(path)).fields.items()
                if not key.startswith("GGUF.") and key != "t.nested"}
    assert fields == expected
    assert fields["t.u64"] == 2**64 - 1
    assert fields["t.strings"][2] == "Ġ✓"
    assert fields["t.bools"] == [True, False, True]
    assert fields["t.f32"] == np.float32(0.1)  # stored as float32


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGML" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_metadata(path)
