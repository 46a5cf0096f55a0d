import importlib
import json

import pytest
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

import hfq
from hfq import HfqConfig


def test_registered_under_hfq_and_import_twice_is_fine():
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["hfq"] is HfqConfig
    assert AUTO_QUANTIZER_MAPPING["hfq"] is hfq.HfqQuantizer
    importlib.reload(hfq)
    hfq.register()
    assert AUTO_QUANTIZER_MAPPING["hfq"].__name__ == "HfqQuantizer"
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["hfq"].__name__ == "HfqConfig"
    import hfq.kernels.ops as ops

    importlib.reload(ops)  # op schemas are defined once, not twice


def test_defaults_are_filled():
    assert HfqConfig().to_dict() == {"quant_method": "hfq", "hfq_format_version": 1, "method": "nf4", "bits": 4,
                                     "group_size": 64, "sym": None, "double_quant": False,
                                     "modules_to_not_convert": None}
    r = HfqConfig(method="rtn")
    assert (r.bits, r.group_size, r.sym, r.double_quant) == (4, 128, True, False)


@pytest.mark.parametrize("kwargs", [dict(method="rtn", bits=3, group_size=-1, sym=False),
                                    dict(method="nf4", double_quant=True, modules_to_not_convert=["lm_head"]),
                                    dict(method="fp4", group_size=128)])
def test_dict_round_trip_is_json_native(kwargs):
    cfg = HfqConfig(**kwargs)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["quant_method"] == "hfq" and d["hfq_format_version"] == 1
    assert HfqConfig.from_dict(d).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="int4"), r"method='int4' is not an hfq method; allowed: 'rtn', 'nf4', 'fp4'"),
    (dict(method="rtn", bits=9), r"bits=9 is not supported by rtn; allowed: 2, 3, 4, 5, 6, 7, 8"),
    (dict(method="rtn", bits=1), r"bits=1"),
    (dict(method="rtn", group_size=100), r"group_size=100 is not supported by rtn; allowed: -1, 16, 32"),
    (dict(method="nf4", bits=8), r"bits=8 is not possible with method='nf4'; allowed: 4"),
    (dict(method="nf4", group_size=48), r"group_size=48 is not a nf4 block size; allowed: 32, 64"),
    (dict(method="rtn", double_quant=True), r"double_quant=True does not apply to method='rtn'"),
    (dict(method="nf4", sym=True), r"sym=True applies to method='rtn' only"),
    (dict(method="rtn", bits="4"), r"bits='4' must be an int"),
    (dict(method="rtn", sym="yes"), r"sym='yes' must be True or False"),
    (dict(modules_to_not_convert=[1]), r"modules_to_not_convert=\[1\] must be a list"),
    (dict(colour="red"), r"unknown argument\(s\) \['colour'\]"),
    (dict(hfq_format_version=99), r"hfq_format_version=99 is not supported.*upgrade hfq"),
])
def test_invalid_configs_name_value_and_allowed_set(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HfqConfig(**kwargs)
