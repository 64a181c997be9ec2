"""Links that open the exact view: URL parameters in, the address bar out, a copy-link widget.

Not a page itself (app.py lists the pages). Every explanation page reads its view the same way:

    links.url_value("step", "candidates.step", int, range(n).__contains__)  # before the widget
    step = st.select_slider("Step", range(n), key="candidates.step")
    links.set_url(step=step)                                                  # after it
    links.copy_link(slot)                                                     # once, at the end

URL values are 0-based indices and short names (view=token); pages show 1-based labels.
A parameter this module does not know (the conversation id `c` that app.py puts in the URL)
is never removed: set_url writes only the names it is given, and copy_link copies them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import streamlit as st

SEEN = "links.seen"  # name -> (widget key, raw value) the widget last took from the URL or wrote to it
BOUND = "links.bound"  # name -> the widget key url_value last bound it to
RIDE_ALONG = ("c",)  # kept on every link to another page: the conversation id app.py sets


def url_value(
    name: str,
    key: str,
    parse: Callable[[str], Any] = str,
    valid: Callable[[Any], bool] | None = None,
) -> bool:
    """Before drawing the widget `key`: take ?name= into st.session_state[key], once per value.

    The URL wins when it brings a value this widget has not seen (a link, an edited URL), or
    when the widget has no state (Streamlit drops it on a page switch, so a link back to a page
    opens what it names). Afterwards the widget is the reader's: set_url writes its value back,
    and the same URL value is not applied again. parse turns the text into the widget's value
    (None, or a ValueError/KeyError, means "not a value"); valid may reject it. A value that is
    not valid is ignored, once, like any other. Returns True when the URL value was applied.
    """
    st.session_state.setdefault(BOUND, {})[name] = key
    raw = st.query_params.get(name)
    seen = st.session_state.setdefault(SEEN, {})
    if raw is None or (seen.get(name) == (key, raw) and key in st.session_state):
        return False
    seen[name] = (key, raw)
    try:
        value = parse(raw)
    except (ValueError, KeyError, TypeError):
        return False
    if value is None or (valid is not None and not valid(value)):
        return False
    st.session_state[key] = value
    return True


def set_url(**params: object) -> None:
    """After drawing the widgets: write their values to the address bar (None removes a name).

    The address bar is then always a link to what the page shows. Only the names given are
    touched; every other parameter stays. Call url_value for a name first, so the value
    written here counts as seen and is not applied again on the next run.
    """
    seen = st.session_state.setdefault(SEEN, {})
    bound = st.session_state.get(BOUND, {})
    for name, value in params.items():
        if value is None:
            if name in st.query_params:
                del st.query_params[name]
            seen.pop(name, None)
            continue
        text = str(value)
        if st.query_params.get(name) != text:
            st.query_params[name] = text
        if name in bound:
            seen[name] = (bound[name], text)


def current_url() -> str:
    """The page's full address with every current query parameter (unknown ones included).

    st.context.url is the page's address without its query; it is None outside a browser
    (AppTest), where the link is just the query.
    """
    pairs = [(name, value) for name in st.query_params for value in st.query_params.get_all(name)]
    query = urlencode(pairs)
    base = st.context.url or ""
    return f"{base}?{query}" if query else base


def copy_link(where=None) -> None:
    """A "🔗 Copy link to this view" popover holding the address (st.code has a copy button).

    Call it last, after every set_url, into a container kept near the top of the page.
    """
    box = where if where is not None else st
    with box.popover("Copy link to this view", icon="🔗"):
        st.caption(
            "This address opens this page as it is now: the same reply, step and view. "
            "The copy button sits at the top right of the box (point at it to see it)."
        )
        st.code(current_url(), language=None, wrap_lines=True)


def ride_along() -> dict[str, str]:
    """The URL parameters every link to another page keeps (RIDE_ALONG), as they stand now."""
    return {name: st.query_params[name] for name in RIDE_ALONG if name in st.query_params}


def page_link(page: str, label: str, icon: str | None = None, **params: object) -> None:
    """st.page_link to another page with these URL parameters (plus the conversation id).

    The label is plain text (it may hold model tokens): markdown in it is shown literally.
    """
    from pages.explain_panel import plain_label  # the one escaper for page-link labels

    query = ride_along()
    query.update({name: str(value) for name, value in params.items() if value is not None})
    st.page_link(page, label=plain_label(label), icon=icon, query_params=query)
