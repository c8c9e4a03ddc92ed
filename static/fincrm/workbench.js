// The workbench pages: show only the inputs the chosen field type uses, and ask before
// archiving or reverting. Everything works without this script (the server ignores
// settings a type does not use); it only tidies the form.
(function () {
  "use strict";
  function syncType(form) {
    var select = form.querySelector("select[name=type]");
    if (!select) { return; }
    var type = select.value;
    form.querySelectorAll("[data-uses]").forEach(function (group) {
      var uses = group.getAttribute("data-uses").split(" ");
      group.style.display = uses.indexOf(type) < 0 ? "none" : "";
    });
  }
  document.querySelectorAll("form.fincrm-wb-form").forEach(function (form) {
    var select = form.querySelector("select[name=type]");
    if (select) {
      select.addEventListener("change", function () { syncType(form); });
      syncType(form);
    }
  });
  document.querySelectorAll("button[data-confirm]").forEach(function (button) {
    button.addEventListener("click", function (event) {
      if (!window.confirm(button.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
})();
