// The demo home screen: the SDK's IIFE does the work; this file only renders.
// Everything from the server is shown with textContent (no HTML injection).
(function () {
  var q = new URLSearchParams(location.search);
  var event = q.get('event') || 'fight-2026-11-15';
  var device = q.get('device') || 'demo-' + Math.random().toString(36).slice(2, 8);
  var $ = function (id) { return document.getElementById(id); };
  $('event').textContent = event;
  function rows(payload) {
    var box = $('rows');
    box.textContent = '';
    var list = payload && payload.rows;
    if (!list || !list.length) {
      var p = document.createElement('p');
      p.textContent = payload === undefined ? 'This stage is not in the map held (it will be fetched once).' : JSON.stringify(payload);
      box.appendChild(p);
      return;
    }
    list.forEach(function (r) {
      var d = document.createElement('div');
      d.className = 'row';
      d.textContent = String(r);
      box.appendChild(d);
    });
  }
  function toast(text) {
    var t = document.createElement('div');
    t.className = 'toast';
    t.textContent = text;
    $('toasts').appendChild(t);
    setTimeout(function () { t.remove(); }, 8000);
  }
  fetch('config.json').then(function (r) { return r.json(); }).then(function (cfg) {
    var client = Stagecast.createClient({
      proxies: [cfg.proxy], graphql: cfg.graphql, events: [event], device: device,
      platform: q.get('platform') || 'web', segment: q.get('segment') || undefined, notes: true,
    });
    window.stagecastDemo = { client: client, device: device, event: event };
    client.on('state', function (s) { $('conn').textContent = s; $('conn').dataset.state = s; });
    client.on('stage', function (s) {
      $('stage').textContent = s.key;
      $('version').textContent = 'v' + s.v;
      rows(s.payload);
    });
    client.on('note', function (n) {
      toast(n.type + (n.payload && n.payload.text ? ': ' + n.payload.text : ''));
    });
  });
})();
