document.querySelectorAll('table.sortable').forEach(function (table) {
  var body = table.tBodies[0];
  table.querySelectorAll('th[data-col]').forEach(function (th) {
    th.addEventListener('click', function () {
      var col = +th.dataset.col, asc = th.dataset.dir !== 'asc';
      table.querySelectorAll('th[data-col]').forEach(function (h) { h.removeAttribute('data-dir'); });
      th.dataset.dir = asc ? 'asc' : 'desc';
      var key = function (row) {
        var cell = row.cells[col];
        return cell.dataset.v !== undefined ? parseFloat(cell.dataset.v) : cell.textContent.trim().toLowerCase();
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x === 'number' && isNaN(x)) return (typeof y === 'number' && isNaN(y)) ? 0 : 1;
        if (typeof y === 'number' && isNaN(y)) return -1;
        var c = x < y ? -1 : (x > y ? 1 : 0);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
(function () {
  // with a quality table: step through the flagged cases (buttons, or the keys n and p) and show only them
  var next = document.getElementById('next-flagged'), prev = document.getElementById('prev-flagged');
  var only = document.getElementById('flagged-only'), pos = document.getElementById('flag-position');
  if (!next) return;
  var cases = Array.prototype.slice.call(document.querySelectorAll('#gallery .case[data-flag]'));
  var at = -1;
  function show(i) {
    at = (i + cases.length) % cases.length;
    cases[at].scrollIntoView({block: 'start'});
    pos.textContent = 'flagged case ' + (at + 1) + ' of ' + cases.length + ': ' + cases[at].id.slice(5);
  }
  function filter(on) {
    only.checked = on;
    document.body.classList.toggle('flagged-only', on);
  }
  next.addEventListener('click', function () { show(at + 1); });
  prev.addEventListener('click', function () { show(at - 1); });
  only.addEventListener('change', function () { filter(only.checked); });
  document.addEventListener('keydown', function (ev) {
    if (ev.target.tagName === 'INPUT' || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === 'n') show(at + 1);
    if (ev.key === 'p') show(at - 1);
  });
  filter(location.hash === '#flagged');  // a link to the page's flagged cases only
  pos.textContent = cases.length + ' flagged (keys n / p)';
})();
