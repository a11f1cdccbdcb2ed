// Refresh the monitors every two seconds (the page works without it: reload by hand).
(function () {
  async function refresh() {
    try {
      const r = await fetch("/fragment", {cache: "no-store"});
      if (r.ok) document.getElementById("monitors").innerHTML = await r.text();
    } catch (e) { /* the hub stopped: keep the last view */ }
  }
  setInterval(refresh, 2000);
})();
