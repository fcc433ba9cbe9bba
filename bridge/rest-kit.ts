/**
 * What every REST router of the hub shares: the coded error body, who is asking, and a JSON
 * body parser whose failures are coded errors too (PAYLOAD_TOO_LARGE, BAD_REQUEST) instead of
 * Express' HTML pages.
 */
import express, { type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import type { Principal } from '../src/auth/roles.js';
import { httpStatusOf, type ErrorCode } from '../src/errors.js';

/**
 * `{"status":"error","code":…,"message":…}` with the code's HTTP status (or the one given). A
 * response already under way (a download that failed halfway) can only be cut off.
 */
export function sendError(res: Response, code: ErrorCode, message: string, httpStatus = httpStatusOf(code)): void {
  if (res.headersSent) return void res.destroy();
  res.status(httpStatus).json({ status: 'error', code, message });
}

/** The principal `requirePrincipal` put on the response. */
export const principalOf = (res: Response): Principal => res.locals.principal as Principal;

/** Parses any body as JSON (`strict`: objects and arrays only), at most `limit` bytes. */
export function jsonBody(limit: number, { strict = true } = {}): RequestHandler {
  const parse = express.json({ limit, strict, type: () => true });
  return (req: Request, res: Response, next: NextFunction) =>
    parse(req, res, (error?: unknown) => {
      const failure = error as { type?: string } | undefined;
      if (!failure) return next();
      if (failure.type === 'entity.too.large') sendError(res, 'PAYLOAD_TOO_LARGE', `body is larger than ${limit} bytes`);
      else if (failure.type === 'entity.parse.failed') sendError(res, 'BAD_REQUEST', 'body is not valid JSON');
      else next(error);
    });
}
