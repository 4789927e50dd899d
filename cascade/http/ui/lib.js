// The one place that names the vendored UI library (htm bundled with Preact
// and its hooks, vendor/README.md): pages import from here.
export {
  html, render, useState, useEffect, useRef, useMemo, useCallback, useContext, createContext,
} from './vendor/htm-preact-standalone-3.1.1.js';
