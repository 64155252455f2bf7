// Unit atlas: sort and search the channel grid of a layer page. Plain script, no network.
(function () {
  "use strict";
  var grid = document.getElementById("grid");
  var sort = document.getElementById("sort");
  var search = document.getElementById("search");
  var count = document.getElementById("count");
  if (!grid || !sort || !search) {
    return;
  }
  var tiles = Array.prototype.slice.call(grid.querySelectorAll(".tile"));
  tiles.forEach(function (tile) {
    tile.atlasChannel = Number(tile.dataset.channel);
    tile.atlasValue = Number(tile.dataset.activation);
  });

  // "7", "3-9, 12" -> predicate on channel numbers; null for an empty query, false if malformed.
  function parse(query) {
    var parts = query.split(/[\s,]+/).filter(Boolean);
    if (!parts.length) {
      return null;
    }
    var ranges = [];
    for (var i = 0; i < parts.length; i++) {
      var m = /^(\d+)(?:-(\d+))?$/.exec(parts[i]);
      if (!m) {
        return false;
      }
      var lo = Number(m[1]);
      var hi = m[2] === undefined ? lo : Number(m[2]);
      ranges.push([Math.min(lo, hi), Math.max(lo, hi)]);
    }
    return function (channel) {
      return ranges.some(function (r) {
        return channel >= r[0] && channel <= r[1];
      });
    };
  }

  var orders = {
    activation: function (a, b) {
      return b.atlasValue - a.atlasValue || a.atlasChannel - b.atlasChannel;
    },
    weakest: function (a, b) {
      return a.atlasValue - b.atlasValue || a.atlasChannel - b.atlasChannel;
    },
    channel: function (a, b) {
      return a.atlasChannel - b.atlasChannel;
    },
  };

  function apply() {
    tiles.sort(orders[sort.value] || orders.activation);
    var match = parse(search.value);
    search.setCustomValidity(match === false ? "channel numbers or ranges, e.g. 7 or 3-9, 12" : "");
    var shown = 0;
    var fragment = document.createDocumentFragment();
    tiles.forEach(function (tile) {
      var visible = match === null || (match !== false && match(tile.atlasChannel));
      tile.hidden = !visible;
      shown += visible ? 1 : 0;
      fragment.appendChild(tile);
    });
    grid.appendChild(fragment);
    if (count) {
      count.textContent = shown + " of " + tiles.length + " channels";
    }
  }

  sort.addEventListener("change", apply);
  search.addEventListener("input", apply);
  if (sort.value !== "activation" || search.value) {
    apply(); // the browser restored the controls (back button)
  }
})();
