// Del as a dialog (the guide's pop-up window). Without this script the Del button is a link
// to /sager/N/del, a page with the same search and the same form; here it opens a <dialog>,
// searches as one types (GET …/del/brugere?q=) and keeps "Vil blive delt med" in the form.
(function () {
  "use strict";
  var opener = document.getElementById("del-open");
  var dialog = document.getElementById("del-dialog");
  if (!opener || !dialog || typeof dialog.showModal !== "function" || !window.fetch) {
    return;
  }
  var input = document.getElementById("del-q");
  var results = document.getElementById("del-results");
  var chosen = document.getElementById("del-chosen");
  var none = document.getElementById("del-none");
  var status = document.getElementById("del-status");
  var texts = { add: dialog.dataset.add, remove: dialog.dataset.remove, empty: dialog.dataset.empty };
  var timer = null;
  var asked = 0;

  opener.addEventListener("click", function (event) {
    event.preventDefault();
    dialog.showModal();
    input.focus();
  });
  dialog.querySelector("[data-close]").addEventListener("click", function () {
    dialog.close();
  });
  dialog.addEventListener("close", function () {
    opener.focus();
  });
  input.addEventListener("input", function () {
    window.clearTimeout(timer);
    timer = window.setTimeout(search, 200);
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter") {
      event.preventDefault();
      window.clearTimeout(timer);
      search();
    }
  });

  function picked() {
    return Array.prototype.map.call(chosen.querySelectorAll("input[name=valgt]"), function (field) {
      return field.value;
    });
  }

  function search() {
    var query = input.value.trim();
    var mine = ++asked;
    if (!query) {
      results.replaceChildren();
      status.textContent = "";
      return;
    }
    fetch(input.dataset.searchUrl + "?q=" + encodeURIComponent(query), {
      credentials: "same-origin", headers: { Accept: "application/json" }
    }).then(function (response) {
      return response.ok ? response.json() : [];
    }).then(function (users) {
      if (mine === asked) {
        show(users);
      }
    });
  }

  function show(users) {
    var taken = picked();
    var shown = users.filter(function (user) { return taken.indexOf(user.email) < 0; });
    results.replaceChildren();
    shown.forEach(function (user) {
      var item = document.createElement("li");
      var button = document.createElement("button");
      button.type = "button";
      button.className = "pick";
      button.textContent = user.name + " (" + user.email + ")";
      button.setAttribute("aria-label", texts.add + " " + user.name);
      button.addEventListener("click", function () {
        add(user);
        item.remove();
        input.focus();
      });
      item.appendChild(button);
      results.appendChild(item);
    });
    status.textContent = shown.length ? "" : texts.empty;
  }

  function add(user) {
    var item = document.createElement("li");
    var name = document.createElement("span");
    var field = document.createElement("input");
    var remove = document.createElement("button");
    name.textContent = user.name + " (" + user.email + ")";
    field.type = "hidden";
    field.name = "valgt";
    field.value = user.email;
    remove.type = "button";
    remove.className = "button button-small button-secondary";
    remove.textContent = texts.remove;
    remove.setAttribute("aria-label", texts.remove + " " + user.name);
    remove.addEventListener("click", function () {
      item.remove();
      none.hidden = chosen.children.length > 0;
      input.focus();
    });
    item.append(name, field, remove);
    chosen.appendChild(item);
    none.hidden = true;
  }
}());
