// fashionkit serve: the little JavaScript the pages use. Everything works without it except the frame player
// and drag-and-drop; forms and links are plain HTML.
"use strict";

// upload: dropping a file onto the zone fills the form's file input and submits it
document.querySelectorAll(".dropzone").forEach(function (zone) {
  var input = zone.querySelector("input[type=file]");
  var form = zone.closest("form");
  ["dragenter", "dragover"].forEach(function (ev) {
    zone.addEventListener(ev, function (e) { e.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (ev) {
    zone.addEventListener(ev, function (e) { e.preventDefault(); zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (e) {
    if (e.dataTransfer.files.length) { input.files = e.dataTransfer.files; form.submit(); }
  });
  input.addEventListener("change", function () { if (input.files.length) { form.submit(); } });
});

// video results: step through the annotated video's frames (served one JPEG at a time)
document.querySelectorAll(".viewer[data-frames]").forEach(function (viewer) {
  var img = viewer.querySelector("img.frame");
  var slider = viewer.querySelector("input[type=range]");
  var label = viewer.querySelector(".frame-label");
  var play = viewer.querySelector("button.play");
  var base = viewer.dataset.base, fps = parseFloat(viewer.dataset.fps) || 10;
  var timer = null;
  function show(n) {
    slider.value = n;
    img.src = base + n + ".jpg";
    label.textContent = "frame " + n + " / " + slider.max;
  }
  slider.addEventListener("input", function () { show(slider.value); });
  document.querySelectorAll("a[data-frame]").forEach(function (a) {
    a.addEventListener("click", function (e) { e.preventDefault(); show(a.dataset.frame); window.scrollTo(0, 0); });
  });
  play.addEventListener("click", function () {
    if (timer) { clearInterval(timer); timer = null; play.textContent = "play"; return; }
    play.textContent = "pause";
    timer = setInterval(function () {
      var n = parseInt(slider.value, 10) + 1;
      if (n > parseInt(slider.max, 10)) { n = 0; }
      show(n);
    }, 1000 / Math.min(fps, 12));
  });
});
