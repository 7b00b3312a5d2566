"""Hostile strings for the tests of cvlib's HTML pages, and a check in Chromium that none
of them ran: each sets ``window.pwned`` if a page inserts it unescaped, as an element, in
a quoted or unquoted attribute, inside a script or a ``<pre>``, or as a link."""

HOSTILE = (
    "<script>window.pwned = 'script'</script>",
    "<img src=x onerror=\"window.pwned = 'img'\">",
    "\" onmouseover=\"window.pwned = 'double quote'\" autofocus onfocus=\"window.pwned = 'focus'",
    "' onmouseover='window.pwned = 1' x='",
    "</script><script>window.pwned = 'closed script'</script>",
    "</pre></code></b><svg onload=\"window.pwned = 'svg'\"></svg>",
    "javascript:window.pwned = 'link'",
    "$\\x$ and $\\frac{$: not mathtext",
)
# Dialogs count as a script that ran too.
TRAP = "window.alert = window.confirm = window.prompt = () => { window.pwned = 'dialog'; };"


def open_trapped(page, url: str) -> list[str]:
    """Open a page in Chromium with dialogs trapped.

    Returns:
        The dialogs it opened (filled in as they come).
    """
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.add_init_script(TRAP)
    page.goto(url)
    return dialogs


def assert_hostile_text_is_inert(page, dialogs: list[str], scripts: int) -> None:
    """No hostile string ran, made an element, or was lost: each shows as text.

    Args:
        page: The Playwright page, opened with :func:`open_trapped`.
        dialogs: What open_trapped returned.
        scripts: The ``<script>`` elements the page has of its own.
    """
    # Hover and focus everything, for the handlers that wait for it.
    page.eval_on_selector_all("body *", """elements => elements.forEach(element => {
        element.dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
        element.dispatchEvent(new FocusEvent("focus"));
    })""")
    assert page.evaluate("window.pwned") is None
    assert dialogs == []
    assert page.locator("script").count() == scripts
    assert page.locator("svg, img[src=x], [onmouseover], [onfocus], [onerror], "
                        "a[href^=javascript]").count() == 0
    text = page.inner_text("body")
    for hostile in HOSTILE:
        assert hostile in text, hostile
