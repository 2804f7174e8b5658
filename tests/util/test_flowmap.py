"""addon/util/flowmap.py: a weak map from flows, as WeakKeyDictionary is for the operations the addon uses."""

from __future__ import annotations

import gc
import weakref

import pytest
from mitmproxy.test import tflow

from addon.util.flowmap import FlowMap


def test_it_maps_each_flow_to_its_value_and_answers_as_a_dict_does():
    m: FlowMap = FlowMap()
    a, b = tflow.tflow(), tflow.tflow()
    m[a] = 1
    assert m[a] == m.get(a) == 1 and m.get(b) is None and m.get(b, 7) == 7
    assert a in m and b not in m and len(m) == 1
    m[a] = 2  # replaced, not added
    assert m.get(a) == 2 and len(m) == 1
    m[b] = 3
    assert m.pop(a) == 2 and m.pop(a, None) is None and len(m) == 1
    with pytest.raises(KeyError):
        m.pop(a)
    del m[b]
    assert len(m) == 0 and not m
    with pytest.raises(KeyError):
        m[b]
    with pytest.raises(KeyError):
        del m[b]


def test_a_flows_entry_goes_when_the_flow_does():
    m: FlowMap = FlowMap()
    kept, flows = tflow.tflow(), [tflow.tflow() for _ in range(50)]
    m[kept] = "kept"
    for i, flow in enumerate(flows):
        m[flow] = i
        m[flow] = i  # set twice: still one entry, and one removal when it goes
    assert len(m) == 51
    del flows, flow
    gc.collect()  # (flows are in reference cycles of their own)
    assert len(m) == 1 and m.get(kept) == "kept"


def test_the_map_and_its_values_go_at_once_while_flows_live():
    class Value:
        pass

    m: FlowMap = FlowMap()
    flow, value = tflow.tflow(), Value()
    m[flow] = value
    gone = weakref.ref(value)
    del m, value
    assert gone() is None  # no cycle keeps the map's values (as with a WeakKeyDictionary)
    del flow  # its reference's callback finds the map gone: no error
    gc.collect()


def test_what_it_is_not():
    m: FlowMap = FlowMap()
    assert 1 not in m and "x" not in m  # no weak reference to them: in no map
    with pytest.raises(TypeError):
        iter(m)
