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
