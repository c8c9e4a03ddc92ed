/* Customer 360: draws the monthly transactions chart from the page's JSON data block
   (<script type="application/json" id="c360-data">) with the vendored ECharts. */
(function () {
  'use strict';
  var el = document.getElementById('c360-chart');
  var block = document.getElementById('c360-data');
  if (!el || !block || !window.echarts) {
    return;
  }
  var data = JSON.parse(block.textContent);
  var money = new Intl.NumberFormat(data.locale, { style: 'currency', currency: data.currency, minimumFractionDigits: 2 });
  var short = new Intl.NumberFormat(data.locale, { notation: 'compact', maximumFractionDigits: 1 });
  var toNumber = function (text) { return Number(text); };
  var chart = window.echarts.init(el);
  chart.setOption({
    animation: false,
    tooltip: {
      trigger: 'axis',
      axisPointer: { type: 'shadow' },
      valueFormatter: function (value) { return money.format(value); }
    },
    legend: { data: [data.labels['in'], data.labels.out] },
    grid: { left: 60, right: 20, top: 40, bottom: 40 },
    xAxis: { type: 'category', data: data.months },
    yAxis: { type: 'value', axisLabel: { formatter: function (value) { return short.format(value); } } },
    series: [
      { name: data.labels['in'], type: 'bar', data: data['in'].map(toNumber), itemStyle: { color: '#2b7a2b' } },
      { name: data.labels.out, type: 'bar', data: data.out.map(toNumber), itemStyle: { color: '#b03a2e' } }
    ]
  });
  window.addEventListener('resize', function () { chart.resize(); });
  el.setAttribute('data-rendered', '1');
}());
