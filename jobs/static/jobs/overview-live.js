/* The queue overview updates itself in place every few seconds (data-live on .jobs-page, in
   seconds), without reloading the page: it fetches the page again and swaps its content. It
   pauses while the tab is hidden and catches up when it is shown again. */
"use strict";
(function () {
    const page = document.querySelector(".jobs-page[data-live]");
    if (!page || !window.fetch || !window.DOMParser) {
        return;
    }
    const every = Math.max(Number(page.dataset.live) || 5, 1) * 1000;
    let timer = null;
    let busy = false;

    async function refresh() {
        if (busy || document.hidden) {
            return;
        }
        busy = true;
        try {
            const response = await fetch(window.location.href, {
                credentials: "same-origin", cache: "no-store", headers: {"X-Requested-With": "XMLHttpRequest"},
            });
            if (!response.ok || response.redirected) {  // logged out, or an error page: keep what is shown
                throw new Error("status " + response.status);
            }
            const fresh = new DOMParser().parseFromString(await response.text(), "text/html")
                .querySelector(".jobs-page[data-live]");
            if (!fresh) {
                throw new Error("no overview in the response");
            }
            page.replaceChildren(...Array.from(fresh.childNodes, (node) => document.importNode(node, true)));
            page.dataset.updates = String(Number(page.dataset.updates || 0) + 1);
        } catch (error) {
            const status = document.getElementById("jobs-live-status");
            if (status) {
                status.textContent = "Live updates paused: " + error.message + "; trying again";
                status.classList.add("jobs-live--failed");
            }
        } finally {
            busy = false;
        }
    }

    function start() {
        if (timer === null) {
            timer = window.setInterval(refresh, every);
        }
    }

    function stop() {
        window.clearInterval(timer);
        timer = null;
    }

    document.addEventListener("visibilitychange", function () {
        if (document.hidden) {
            stop();
        } else {
            refresh();
            start();
        }
    });
    if (!document.hidden) {
        start();
    }
})();
