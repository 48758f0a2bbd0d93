(function () {
  "use strict";
  // Filters: rows carry data-actor, data-op, data-vm and data-time (ISO 8601, UTC).
  var rows = Array.prototype.slice.call(document.querySelectorAll("table.log tbody tr"));
  var actor = document.getElementById("f-actor");
  var op = document.getElementById("f-op");
  var vm = document.getElementById("f-vm");
  var from = document.getElementById("f-from");
  var to = document.getElementById("f-to");
  var shown = document.getElementById("shown");
  function apply() {
    var a = actor.value, o = op.value, v = vm.value;
    var f = from.value.trim(), t = to.value.trim();
    var n = 0;
    rows.forEach(function (r) {
      var time = r.dataset.time;
      var keep = (!a || r.dataset.actor === a) && (!o || r.dataset.op === o) &&
        (!v || r.dataset.vm === v) && (!f || time >= f) &&
        (!t || time.slice(0, t.length) <= t);
      r.hidden = !keep;
      if (keep) { n += 1; }
    });
    shown.textContent = n + " of " + rows.length + " events shown";
  }
  [actor, op, vm].forEach(function (el) { el.addEventListener("change", apply); });
  [from, to].forEach(function (el) { el.addEventListener("input", apply); });
  document.getElementById("filters").addEventListener("submit", function (ev) { ev.preventDefault(); });
  apply();
  // Hover: a mark's <title> in a box that follows the pointer (one listener for all marks).
  var tip = document.getElementById("tip");
  document.addEventListener("mouseover", function (ev) {
    var mark = ev.target.closest ? ev.target.closest(".mark") : null;
    if (!mark) { tip.hidden = true; return; }
    tip.textContent = mark.querySelector("title").textContent;
    tip.style.left = (ev.pageX + 14) + "px";
    tip.style.top = (ev.pageY + 14) + "px";
    tip.hidden = false;
  });
})();
