"""The overview's throughput chart: its geometry as numbers (jobs/admin/chart.py), its SVG from a template."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from django.template.loader import render_to_string
from django.test import override_settings
from django.utils import timezone, translation

from jobs.admin.chart import BOTTOM, HEIGHT, LEFT, RIGHT, TOP, WIDTH, axis, throughput_chart

TEMPLATE = "admin/jobs/queuestate/chart.svg.html"
SVG = "{http://www.w3.org/2000/svg}"
PLOT_HEIGHT = HEIGHT - TOP - BOTTOM
BASE = TOP + PLOT_HEIGHT


def hour(counts) -> list:
    """``counts``: (successful, failed) per minute, oldest first, the last one this minute."""
    now = timezone.now().replace(second=0, microsecond=0)
    return [(now - timedelta(minutes=len(counts) - 1 - i), ok, bad) for i, (ok, bad) in enumerate(counts)]


def svg_of(chart) -> ET.Element:
    text = render_to_string(TEMPLATE, {"chart": chart}).replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1)
    return ET.fromstring(text)  # well-formed, or this raises


def test_axis_steps_are_round_with_headroom():
    assert [axis(peak) for peak in (0, 8, 47, 250)] == [(1, 4), (2, 10), (20, 60), (100, 300)]
    assert axis(1_000_000) == (500_000, 1_500_000)


def test_ticks_and_bar_heights():
    chart = throughput_chart(hour([(5, 3), (0, 0), (2, 0), (0, 4)]))  # peak 8: ticks of 2 up to 10
    assert [t.value for t in chart.ticks] == [0, 2, 4, 6, 8, 10]
    assert chart.ticks[0].y == chart.base_y == BASE and chart.ticks[-1].y == TOP
    assert chart.ticks[1].label_y == round(chart.ticks[1].y + 4, 1)
    first, empty, ok_only, bad_only = chart.bars
    assert first.ok_height == round(PLOT_HEIGHT * 5 / 10, 1) and first.ok_y + first.ok_height == pytest.approx(BASE)
    assert first.bad_height == round(PLOT_HEIGHT * 3 / 10, 1) and first.bad_y + first.bad_height == pytest.approx(first.ok_y)
    assert (empty.ok_height, empty.bad_height) == (0, 0)
    assert bad_only.ok_height == 0 and bad_only.bad_y + bad_only.bad_height == pytest.approx(BASE)
    slot = (WIDTH - LEFT - RIGHT) / 4
    assert [bar.x for bar in chart.bars] == [round(LEFT + i * slot + 1, 1) for i in range(4)]
    assert chart.bar_width == round(slot - 2, 1) and ok_only.slot_x == round(ok_only.x - 1, 1)


def test_every_tenth_minute_back_from_now_is_labelled():
    chart = throughput_chart(hour([(1, 0)] * 60))
    assert [bar.minutes_ago for bar in chart.bars if bar.minutes_ago is not None] == [50, 40, 30, 20, 10, 0]


def test_empty_data_has_an_axis_and_no_bars():
    chart = throughput_chart([])
    assert chart.bars == () and [t.value for t in chart.ticks] == [0, 1, 2, 3, 4]
    svg = svg_of(chart)
    assert svg.findall(f"{SVG}g") == [] and len(svg.findall(f"{SVG}line")) == 6  # 5 grid lines and the base


def test_the_template_draws_a_group_per_minute_with_its_tooltip():
    minutes = hour([(i % 3, i % 2) for i in range(60)])
    text = render_to_string(TEMPLATE, {"chart": throughput_chart(minutes)})
    assert text.count("<g>") == 60 and text.count('class="bad"') == 30 and text.count('class="ok"') == 40
    assert f"{minutes[-1][0]:%H:%M}  2 successful, 1 failed" in text and ">now</text>" in text
    assert "&#8722;10 min</text>" in text
    svg = svg_of(throughput_chart(minutes))
    assert svg.get("viewBox") == f"0 0 {WIDTH} {HEIGHT}"
    now = svg.findall(f"{SVG}g")[-1]
    assert now.find(f"{SVG}title").text.endswith("2 successful, 1 failed")
    ok, bad = now.find(f"{SVG}rect[@class='ok']"), now.find(f"{SVG}rect[@class='bad']")
    assert float(ok.get("y")) + float(ok.get("height")) == pytest.approx(BASE)  # stacked: successful on the base line,
    assert float(bad.get("y")) + float(bad.get("height")) == pytest.approx(float(ok.get("y")))  # failed on top


@pytest.mark.parametrize("language", ["de", "fr"])
def test_numbers_in_the_svg_are_never_localized(language):
    """A locale with a decimal comma and thousands separators must not turn 10.5 into "10,5"."""
    with translation.override(language), override_settings(USE_THOUSAND_SEPARATOR=True):
        svg = svg_of(throughput_chart(hour([(1234, 567), (2000, 1)] * 7)))
    for element in svg.iter():
        for name, value in element.attrib.items():
            if name in ("x", "y", "x1", "x2", "y1", "y2", "width", "height"):
                float(value)  # "10,5" or "1.000" would not parse (or parse wrong)
                assert "," not in value
    labels = [t.text for t in svg.iter(f"{SVG}text") if t.get("text-anchor") == "end"]
    assert labels == ["0", "500", "1000", "1500", "2000", "2500"]
